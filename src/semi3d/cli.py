"""semi3d: label-efficient 3D medical image segmentation (M&N, A&D, SAM mining, SSL baselines).

A config's keys, types and defaults: 'semi3d config --schema'; a config resolved: 'semi3d config
FILE'; commented examples: configs/*.yaml. Bad input ends with one 'error:' line and exit code 2;
Ctrl-C / SIGTERM with one 'stopped:' line and exit code 130 / 143."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

from .engine.interrupt import one_line_exits, what_stopped
from .errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None)
console = Console(markup=False, highlight=False, soft_wrap=True)  # paths and ids as they are, one line each


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"semi3d {version('semi3d')}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """semi3d: label-efficient 3D medical image segmentation."""


ENSEMBLE_HELP = ("another run folder, model file or bundle: the class probabilities of all the models are "
                 "averaged (repeat for more; --which picks a run folder's model)")


def _one_or_list(values: list[float]) -> float | list[float] | None:
    """A repeatable option's values: None when not given, the value when given once."""
    return None if not values else values[0] if len(values) == 1 else values


NSD_HELP = ("also the normalised surface Dice: the share of both surfaces within this many mm of the other "
            "(MONAI's compute_surface_dice); repeat it for one tolerance per foreground class, in class order")
POSTPROCESSING_HELP = ("decide whether keeping the largest connected component of all foreground, then of each "
                       "class, raises the mean Dice (nnU-Net's determine_postprocessing; evaluate scores the run "
                       "without post-processing)")


def _print_table(table) -> None:
    """A rich table, at its full width where the output is no terminal (a log file, a pipe), whose
    width rich would take as 80 columns and cut the class names to fit."""
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    # print(width=) is capped at the console's width, so a console of the table's
    Console(markup=False, highlight=False, width=max(console.width, natural)).print(table)


def _print_summary(summary: dict, title: str) -> None:
    """An evaluation's table, then its post-processing decision when it has one."""
    from .evaluation.postprocessing import format_decision
    from .evaluation.summary import format_table

    decision = summary.pop("postprocessing", None)
    _print_table(format_table(summary, title=title))
    if decision:
        console.print(format_decision(decision))


def _clean_errors(fn=None, *, stop_hint: str = ""):
    """A verb whose bad input ends with one ``error:`` line (exit code 2), and whose Ctrl-C / SIGTERM
    ends with one ``stopped:`` line (130 / 143), plus ``stop_hint`` (how to go on), after what it
    stopped cleaned up (a half-written output file goes); ``train`` and ``mine`` say how to resume
    themselves (:func:`_resumable`). ``@_clean_errors`` or ``@_clean_errors(stop_hint=...)``."""
    if fn is None:
        return functools.partial(_clean_errors, stop_hint=stop_hint)

    @functools.wraps(fn)
    def wrapper(*a, **k):
        with one_line_exits(_say, stop_hint):
            return fn(*a, **k)

    return wrapper


def _say(head: str, text: str) -> None:
    """One ``error:`` / ``stopped:`` line on stderr, its head in red on a terminal (``text`` as it is,
    no markup)."""
    Console(stderr=True).print(Text.assemble((head, "red"), " ", text), highlight=False, soft_wrap=True)


def _resumable(verb: str, config: Path, sets: list[str], run, marker: Path):
    """``run()``; a Ctrl-C / SIGTERM that stopped it ends with one line on how to go on and the
    shell's exit code for the signal (130 / 143): training stops at a resumable checkpoint of its
    step; a Ctrl-C / SIGTERM elsewhere (preprocessing, mining's refinement) stops at once, and ``--resume``
    can go on if the file ``marker`` exists (a run's ``checkpoints/last.pt``, a mining run's
    ``config.yaml``)."""
    import shlex

    from .engine.distributed import current
    from .engine.interrupt import Interrupted

    try:
        return run()  # SIGTERM raises Terminated, a KeyboardInterrupt, in every verb (_clean_errors)
    except KeyboardInterrupt as e:
        info = current()
        if info.is_main:  # under torchrun every rank stopped at the same step; one message
            launch = "torchrun <the same options> -m semi3d.cli" if info.enabled else "semi3d"
            cmd = shlex.join([verb, str(config), *(x for s in sets for x in ("--set", s)), "--resume"])
            if isinstance(e, Interrupted) or marker.is_file():
                _say("stopped:", f"{what_stopped(e)}\ncontinue with: {launch} {cmd}")
            else:
                _say("stopped:", f"{what_stopped(e)}, with nothing to resume ({marker} not written); start the run again")
        raise typer.Exit(getattr(e, "exit_code", 130))


@app.command()
@_clean_errors
def train(config: Path, set: list[str] = typer.Option([], "--set", help="override: key=value (YAML value)"),
          resume: bool = typer.Option(False, help="continue the run from checkpoints/last.pt")):
    """Train the run described by CONFIG (YAML; keys: 'semi3d config --schema', examples:
    configs/*.yaml)."""
    from .config import load_config
    from .engine.rundir import RunDir
    from .engine.trainer import train as run_train

    from .engine.distributed import current

    cfg = load_config(config, set)
    summary = _resumable("train", config, set, lambda: run_train(cfg, resume=resume),
                         RunDir(cfg.run_dir).last)
    if current().is_main:  # under torchrun every rank returns here; one line is enough
        console.print(f"done: {summary['iterations']} iterations in {summary['wall_time_s']:.0f} s -> {cfg.run_dir}")


@app.command()
@_clean_errors(stop_hint="\nthe cases written are complete: the same command with --continue predicts the rest")
def predict(model: Path = typer.Argument(..., help="a run folder, a checkpoints/model_*.pt file, a bundle folder (semi3d export) or a mining run (semi3d mine)"),
            inputs: list[Path] = typer.Argument(..., help="image files (.nii.gz .nii .nrrd .mha .h5 .npy; a 4D NIfTI or vector NRRD / MHA holds channels), folders of them, or DICOM series folders"),
            out: Path = typer.Option(..., "--out", "-o", help="output folder"),
            probabilities: bool = typer.Option(False, help="also write the class probability maps"),
            which: str = typer.Option("auto", help="auto (the run's selection policy) | best | final"),
            postprocess: Optional[str] = typer.Option(None, help="none | largest_component (default: the model's inference.postprocess)"),
            precision: str = typer.Option("auto", help="auto (bf16 where the CPU/GPU has it natively) | fp32 | bf16 | fp16"),
            ensemble: list[Path] = typer.Option([], "--ensemble", help=ENSEMBLE_HELP),
            continue_: bool = typer.Option(False, "--continue", help="skip the cases whose outputs are already in OUT (go on after a stop)"),
            dicom_seg: bool = typer.Option(False, "--dicom-seg", help="DICOM series inputs: also write <name>.seg.dcm, a DICOM Segmentation over the series (needs highdicom)"),
            set: list[str] = typer.Option([], "--set", help="an inference setting for this prediction: inference.<field>=<value>"),
            round_: Optional[int] = typer.Option(None, "--round", help="a mining run: the round's model (default: the last finished)")):
    """Segment image files with a trained model; writes <case>.<ending> in the input's format
    (NIfTI, NRRD, MHA, h5, npy) with the input's affine. MODEL may also be a mining run (semi3d
    mine): on volumes its round's model segments volumes; on 2D images, images (.png .jpg ...) in,
    <stem>.png masks (0 / 255) out."""
    from .inference.predictor import predict_files
    from .mining.predict import is_mining_run, predict_images, volume_round_run

    if is_mining_run(model):
        round_run = volume_round_run(model, round_)  # on volumes: the round's run folder predicts
        if round_run is None:  # on 2D images
            given = {"--probabilities": probabilities, "--which": which != "auto", "--postprocess": postprocess,
                     "--ensemble": ensemble, "--set": set, "--dicom-seg": dicom_seg}
            for name in (n for n, v in given.items() if v):
                raise InputError(name, f"not an option for a mining run's 2D model ({model})")
            return predict_images(model, inputs, out, round_, precision, continue_,
                                  progress=lambda i, n, paths: console.print("\n".join(map(str, paths))))
        model, round_ = round_run, None
    if round_ is not None:
        raise InputError("--round", f"only for a mining run; {model} is not one")
    predict_files(model, inputs, out, probabilities, which, postprocess, precision, ensemble, continue_, set,
                  progress=lambda i, n, paths: console.print("\n".join(map(str, paths))),  # as each is written
                  dicom_seg=dicom_seg)


@app.command()
@_clean_errors
def evaluate(run: Path, split: str = typer.Option("validation", help="a split of the run: validation | test | labelled"),
             ids_list: Optional[Path] = typer.Option(None, help="evaluate these ids instead (e.g. a test.list)"),
             data_root: Optional[Path] = typer.Option(None, help="override data.root"),
             set: list[str] = typer.Option([], "--set", help="override the run's config: key=value"),
             which: str = typer.Option("auto", help="auto (the run's selection policy) | best | final"),
             save_predictions: bool = typer.Option(False, help="write the predicted masks too"),
             out: Optional[Path] = typer.Option(None, help="output folder (default RUN/eval_<split>, with --ensemble RUN/eval_<split>_mean_of_<N>)"),
             ensemble: list[Path] = typer.Option([], "--ensemble", help=ENSEMBLE_HELP),
             nsd_tolerance: list[float] = typer.Option([], help=NSD_HELP),
             determine_postprocessing: bool = typer.Option(False, help=POSTPROCESSING_HELP)):
    """Dice / Jaccard / HD95 / ASD per class and case on the original grid -> metrics.json/csv."""
    from .evaluation.evaluate import evaluate_run

    summary = evaluate_run(run, split, ids_list, data_root, set, which, save_predictions, out,
                           progress=lambda i, n, cid, m: console.print(f"[{i}/{n}] {cid}"),
                           ensemble=ensemble, nsd_tolerance=_one_or_list(nsd_tolerance),
                           determine_postprocessing=determine_postprocessing)
    _print_summary(summary, f"{run} ({ids_list or split})")


@app.command("evaluate-folder")
@_clean_errors
def evaluate_folder(predictions: Path = typer.Argument(..., help="folder of predicted label maps, <case><ending>"),
                    references: Path = typer.Argument(..., help="folder of reference label maps of the same cases"),
                    dataset_json: Optional[Path] = typer.Option(None, help="nnU-Net dataset.json with the labels "
                                                                "(default: REFERENCES/../dataset.json when there)"),
                    num_classes: Optional[int] = typer.Option(None, help="K classes with background, without a dataset.json"),
                    ignore_value: Optional[int] = typer.Option(None, help="with --num-classes: the references' value of unannotated voxels (e.g. 255), left out of every metric"),
                    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default PREDICTIONS)"),
                    subset: bool = typer.Option(False, help="score only the predicted cases (default: every reference needs a prediction)"),
                    spacing: Optional[tuple[float, float, float]] = typer.Option(None, help="X Y Z mm for references that store none (h5, npy)"),
                    nsd_tolerance: list[float] = typer.Option([], help=NSD_HELP),
                    determine_postprocessing: bool = typer.Option(False, help=POSTPROCESSING_HELP)):
    """Score another tool's (or semi3d's) predictions against references with semi3d evaluate's
    metrics (nnUNetv2_evaluate_folder) -> metrics.json/csv."""
    from .evaluation.folder import evaluate_folder as run

    summary = run(predictions, references, dataset_json, num_classes, out, subset, spacing,
                  progress=lambda i, n, case: console.print(f"[{i}/{n}] {case}"), nsd_tolerance=_one_or_list(nsd_tolerance),
                  determine_postprocessing=determine_postprocessing, ignore_value=ignore_value)
    _print_summary(summary, f"{predictions} vs {references}")


@app.command()
@_clean_errors
def postprocess(predictions: Path = typer.Argument(..., help="folder of predicted label maps, <case><ending> (any tool's)"),
                out: Path = typer.Option(..., "--out", "-o", help="output folder (another folder: the predictions are only read)"),
                decision: Optional[Path] = typer.Option(None, help="a metrics.json written by --determine-postprocessing"),
                set: list[str] = typer.Option([], "--set", help="inference.largest_foreground_component / postprocess / "
                                              "largest_component_classes=value, on top of --decision")):
    """Apply the largest-component post-processing (a --determine-postprocessing decision, or
    --set values as it prints them) to a folder of label maps (nnUNetv2_apply_postprocessing)."""
    from .evaluation.postprocessing import apply_postprocessing, postprocessing_settings

    written = apply_postprocessing(predictions, out, postprocessing_settings(set, decision),
                                   progress=lambda i, n, case: console.print(f"[{i}/{n}] {case}"))
    console.print(f"{len(written)} file(s) written to {out}")


@app.command()
@_clean_errors
def report(run: Path, out: Optional[Path] = typer.Option(None, help="output folder (default RUN/report)"),
           eval_dir: Optional[str] = typer.Option(None, help="evaluation folder to show (default RUN/eval_validation)"),
           evaluate: bool = typer.Option(False, help="evaluate the validation split first when no evaluation exists"),
           data_root: Optional[Path] = typer.Option(None, help="override data.root (for the overlays)")):
    """HTML (self-contained) and markdown report of a run: curves, per-case metrics worst first,
    overlays of the best, median and worst case, split and config."""
    from .reporting.report import build_report

    paths = build_report(run, out, eval_dir, evaluate, data_root)
    console.print(f"{paths['html']}\n{paths['markdown']}")


@app.command()
@_clean_errors
def suggest(run: Path, k: int = typer.Option(5, "--k", help="number of cases to suggest"),
            out: Optional[Path] = typer.Option(None, help="output folder (default RUN/suggest)"),
            data_root: Optional[Path] = typer.Option(None, help="override data.root"),
            margin: int = typer.Option(2, help="entropy criterion: dilation of the candidate region in voxels")):
    """Rank the run's unlabelled cases by how useful a label would be (M&N: 2D/3D disagreement;
    other methods: predictive entropy) -> suggestions.json/csv and an overlay per suggested case."""
    from .reporting.suggest import suggest_cases

    res = suggest_cases(run, k, out, data_root, margin,
                        progress=lambda i, n, cid, s: console.print(f"[{i}/{n}] {cid}: {s:.4f}"))
    console.print(f"criterion: {res['criterion']}")
    for r in res["ranking"][:k]:
        console.print(f"{r['rank']:>3}  {r['case']}  {r['score']:.4f}")


@app.command()
@_clean_errors
def export(run: Path, out: Path = typer.Option(..., "--out", "-o", help="bundle folder to write (a folder, not a .zip or model file)"),
           format: str = typer.Option("torchscript", "--format", help="torchscript | onnx (needs the onnx package)"),
           which: str = typer.Option("auto", help="auto (the run's selection policy) | best | final")):
    """Export the run's inference model as TorchScript in a MONAI-bundle-style folder that
    `semi3d predict` accepts (configs/metadata.json, models/model.ts, models/model.pt)."""
    from .reporting.export import export_run

    for p in export_run(run, out, format, which).values():
        console.print(str(p))


@app.command()
@_clean_errors
def plan(dataset: Path = typer.Argument(..., help="an nnU-Net v2 raw dataset folder, a Medical Segmentation Decathlon task folder, a UA-MT h5 folder (train.list), or a plain folder of images / DICOM series folders (with --labels)"),
         labels: Optional[Path] = typer.Option(None, "--labels", help="DATASET is a plain folder of images: the folder of their label files, named by case"),
         modality: list[str] = typer.Option([], "--modality", help="with --labels: each channel's modality, e.g. CT (CT normalisation; repeat for several channels)"),
         ignore_value: Optional[int] = typer.Option(None, "--ignore-value", help="with --labels: the label value of unannotated voxels (e.g. 255), nnU-Net's ignore label"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="config to write (default DATASET/semi3d_plan_<method>_<budget>.yaml)"),
         budget: str = typer.Option("cpu", help="cpu | gpu: the patch, network and schedule to fit"),
         method: str = typer.Option("mn", help="the method the config trains"),
         pretrained2d: Optional[str] = typer.Option(None, help="M&N's 2D backbone weights (ImageNet MobileNetV2 file)")):
    """Fingerprint a dataset and write a complete, commented training config (spacing, normalisation,
    patch, network, M&N's slicing axis, batch size, iterations)."""
    from .planning.plan import plan_dataset

    p = plan_dataset(dataset, out, budget, method, pretrained2d,
                     progress=lambda i, n, cid: console.print(f"[{i}/{n}] fingerprint {cid}"), labels=labels,
                     modality=modality or None, ignore_value=ignore_value)
    for k, v in p.notes.items():
        console.print(f"{k}: {v}")
    console.print(f"-> {p.written}")


@app.command()
@_clean_errors
def compare(runs: list[Path] = typer.Argument(..., help="evaluated run folders, or folders scored by evaluate-folder"),
            out: Path = typer.Option(..., "--out", "-o", help="output folder"),
            eval_name: Optional[str] = typer.Option(None, "--eval", help="evaluation folder name (default eval_validation)")):
    """Methods table (markdown + JSON) and a per-case Dice box plot across evaluated runs."""
    from .reporting.compare import compare_runs

    compare_runs(runs, out, eval_name)
    console.print((Path(out) / "compare.md").read_text())


@app.command()
@_clean_errors
def demo(out: Path = typer.Option(Path("runs/demo"), help="folder for the synthetic data and the run"),
         method: str = typer.Option("supervised", help="method to train"),
         set: list[str] = typer.Option([], "--set", help="override the demo config: key=value")):
    """Synthetic dataset -> train -> predict -> evaluate, on CPU in a few minutes."""
    from .demo import run_demo
    from .evaluation.summary import format_table

    res = run_demo(out, method, set)
    _print_table(format_table(res["summary"], title="demo: held-out synthetic test cases"))
    for what in ("run_dir", "predictions", "metrics", "report"):
        console.print(f"{what.replace('_', ' ')}: {res[what]}")


@app.command()
@_clean_errors
def mine(config: Path, set: list[str] = typer.Option([], "--set", help="override: key=value (YAML value)"),
         resume: bool = typer.Option(False, "--resume", help="continue an interrupted run of the same config")):
    """Knowledge mining: small 2D model -> prompts -> promptable refiner (random walker or SAM) ->
    selected pseudo-labels -> fine-tuning, for several rounds (see semi3d.mining.loop)."""
    from .engine.rundir import RunDir
    from .mining.config import load_mining_config
    from .mining.loop import run_mining

    cfg = load_mining_config(config, set)
    summary = _resumable("mine", config, set, lambda: run_mining(cfg, resume), RunDir(cfg.run_dir).config)
    for r in summary["rounds"]:
        kept = f", kept {r['n_kept']}/{r['n_candidates']}" if "n_kept" in r else ""
        if r.get("pseudo_dice_kept") is not None:  # the unlabelled cases' hidden labels are there (benchmarks)
            kept += (f"; kept pseudo-labels' Dice against the hidden labels {100 * r['pseudo_dice_kept']:.2f} "
                     f"(the small model's own masks {100 * r['model_dice_kept']:.2f})")
        console.print(f"round {r['round']}: dev Dice {100 * r['dev_dice']:.2f}{kept}", soft_wrap=True)
        if d3 := r.get("dataset_3d"):
            console.print(f"  3D dataset: {d3['path']} ({d3['n_real']} real, {d3['n_pseudo']} pseudo-labelled, "
                          f"{d3['n_rejected']} rejected, {d3['n_validation']} dev cases; its data: block is in "
                          "pseudo_cases.json)", soft_wrap=True)
    console.print(f"-> {summary['run_dir']}")


@app.command("config")
@_clean_errors
def show_config(config: Optional[Path] = typer.Argument(None, help="a config file to resolve"),
                set: list[str] = typer.Option([], "--set", help="override: key=value (YAML value)"),
                schema: bool = typer.Option(False, "--schema", help="print the JSON schema of every key instead")):
    """Print CONFIG resolved (every key, defaults filled in, --set applied, validated) as YAML, or
    with --schema the JSON schema of the config (keys, types, defaults, allowed values)."""
    import json

    from .config import RunConfig, dump_config, load_config

    if schema:
        from .registry import METHODS

        options = {n: METHODS.get(n).Options.model_json_schema() for n in METHODS.names()}
        console.print_json(json.dumps({**RunConfig.model_json_schema(), "method_options": options}))
    elif config is None:
        raise InputError("config", "give a config file to resolve, or --schema")
    else:
        console.print(dump_config(load_config(config, set)))


@app.command("list")
def list_components():
    """Registered methods and networks."""
    from .registry import METHODS, NETS2D, NETS3D

    for title, reg in (("methods", METHODS), ("3D networks", NETS3D), ("2D networks", NETS2D)):
        console.print(f"[bold]{title}:[/] {', '.join(reg.names())}", markup=True)


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
