# Quick start: `make demo` and `make test` on a fresh machine (Python >= 3.10, pip).
# `make demo SEEDS=3` repeats the demo's comparison over three seeds (mean ± std).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
SEEDS ?= 1

# A separate environment for the real Triton server test (tests/runtime/test_triton_server.py): the
# nvidia-pytriton wheel ships a tritonserver binary with the Python backend; its stub needs numpy < 2.
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed

.PHONY: demo test test-fast lint venv clean triton-env triton-env-optional gpu-bundle

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[train,cpu,dev,triton,openvino]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --seeds $(SEEDS)

test: $(STAMP) triton-env-optional
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check harmonic train export infer scripts tests

$(TRITON_STAMP):
	rm -rf $(TRITON_VENV)
	$(PY) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton>=0.7" "numpy<2" "onnxruntime>=1.20" \
		"opencv-python-headless<4.11" "tritonclient[http,grpc]>=2.40"
	touch $(TRITON_STAMP)

triton-env: $(TRITON_STAMP)

# `make test` tries to build it; where it can't (no wheel for this platform/Python, no network) the
# server test skips with its reason instead of failing the run.
triton-env-optional:
	-@$(MAKE) --no-print-directory triton-env || echo "make triton-env failed: the real Triton server tests will skip"

clean:
	rm -rf runs/demo .pytest_cache

# What scripts/gpu_check.py needs on a bare GPU box (<= 64 MiB): onnxslim + pycocotools wheels for its
# Python 3.12 and a demo-recipe checkpoint trained here. CKPT=path reuses a demo-recipe checkpoint;
# GPU_BUNDLE_ARGS e.g. "--max-iters-per-epoch 60" shortens the training on a busy machine.
gpu-bundle: $(STAMP)
	$(BIN)/python scripts/gpu_bundle.py --out dist/gpu-bundle $(if $(CKPT),--checkpoint $(CKPT)) $(GPU_BUNDLE_ARGS)
