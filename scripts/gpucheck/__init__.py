"""One command for a bare GPU box (<= 8 minutes): AMP training per family, DDP/NCCL, the demo on the GPU,
GPU vs CPU latency, the TensorRT backend's CUDA side, export, ONNX Runtime, TensorRT FP16/INT8 engines.

Runs with the box's own Python and the project on ``PYTHONPATH`` (no install, no ``.venv``),
plus the bundle made here by ``make gpu-bundle`` (``scripts/gpu_bundle.py``: the wheels the box
lacks and a demo-recipe checkpoint trained here). Bad input (an unknown ``--require`` step, a
missing or oversized bundle, a checkpoint of another model) is a one-line error, exit 2, before
any GPU work.

Each step is ok / skipped (reason) / failed (error); every number it measures is written with
its pass threshold to ``<out>/gpu_check.json`` with the device name and versions. ``--require
STEP,...`` turns a skipped step into a failure. The last line names every step that was not
verified; it never says a plain "ok" having checked nothing.

    PYTHONPATH=$PWD python3 scripts/gpu_check.py --bundle dist/gpu-bundle --out runs/gpu_check
    PYTHONPATH=$PWD python3 scripts/gpu_check.py --bundle dist/gpu-bundle --out /tmp/gc --device cpu --quick

``--device cpu --quick`` (tiny data, a few iterations) runs every step that does not need a GPU:
the test suite and a CPU machine use it.

The steps live in this package, one module per group: :mod:`gpucheck.environment` (device, bundle,
data), :mod:`gpucheck.training` (AMP, resume, DDP, the demo recipe), :mod:`gpucheck.latency`,
:mod:`gpucheck.export_ort` (export, ONNX Runtime), :mod:`gpucheck.tensorrt_steps` (with the CUDA-side
stand-in of :mod:`gpucheck.fake_tensorrt`); :mod:`gpucheck.context` holds what they share and
:mod:`gpucheck.runner` the command, the order of the steps and the report.
"""
