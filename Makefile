# Quick start: `make demo` and `make test` on a fresh machine (Python >= 3.10, pip).
# `make demo SEEDS=3` repeats the demo's comparison over three seeds (mean ± std).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
SEEDS ?= 1

.PHONY: demo test test-fast lint venv clean gpu-bundle

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[train,cpu,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --seeds $(SEEDS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check harmonic train export infer scripts tests

clean:
	rm -rf runs/demo .pytest_cache

# What scripts/gpu_check.py needs on a bare GPU box (<= 64 MiB): onnxslim + pycocotools wheels for its
# Python 3.12 and a demo-recipe checkpoint trained here. CKPT=path reuses a demo-recipe checkpoint;
# GPU_BUNDLE_ARGS e.g. "--max-iters-per-epoch 60" shortens the training on a busy machine.
gpu-bundle: $(STAMP)
	$(BIN)/python scripts/gpu_bundle.py --out dist/gpu-bundle $(if $(CKPT),--checkpoint $(CKPT)) $(GPU_BUNDLE_ARGS)
