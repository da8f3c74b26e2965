"""A small Medical Segmentation Decathlon task for the tests (on ``sys.path`` through pyproject's
pytest ``pythonpath``)."""
import json
import shutil

import nibabel as nib
import numpy as np

from semi3d.data.synthetic import write_dataset


def write_task(root, per_channel=False):
    """A two-modality Decathlon task from the synthetic dataset: 4 training cases (4D NIfTI images,
    channels last: the image and 2x + 1 of it), 1 test image without label; ``per_channel``:
    nnU-Net v1's ``<case>_0000`` / ``_0001`` files instead of the 4D ones."""
    src = write_dataset(root.parent / f"src_{root.name}", n_labelled=4, n_unlabelled=0, n_test=1,
                        shape=(24, 24, 16), num_classes=2)
    meta = {"name": "Two", "tensorImageSize": "4D", "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "organ"}, "numTraining": 4, "numTest": 1, "training": [], "test": []}
    for folder, lab in (("imagesTr", "labelsTr"), ("imagesTs", None)):
        (root / folder).mkdir(parents=True)
        for f in sorted((src / folder).glob("*_0000.nii.gz")):
            img = nib.load(f)
            x = np.asarray(img.dataobj)
            case = f.name.replace("_0000.nii.gz", "")
            if per_channel:
                for c, arr in enumerate((x, 2 * x + 1)):
                    nib.save(nib.Nifti1Image(arr, img.affine), root / folder / f"{case}_{c:04d}.nii.gz")
            else:
                nib.save(nib.Nifti1Image(np.stack([x, 2 * x + 1], -1), img.affine), root / folder / f"{case}.nii.gz")
            if lab:
                (root / lab).mkdir(exist_ok=True)
                shutil.copy(src / lab / f"{case}.nii.gz", root / lab / f"{case}.nii.gz")
                meta["training"].append({"image": f"./{folder}/{case}.nii.gz", "label": f"./{lab}/{case}.nii.gz"})
            else:
                meta["test"].append(f"./{folder}/{case}.nii.gz")
    (root / "._syn_000.nii.gz").write_bytes(b"macOS resource fork, as in the Decathlon's archives")
    (root / "dataset.json").write_text(json.dumps(meta))
    return root, src
