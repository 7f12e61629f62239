"""The experiment runner: for each variant and seed, train → export → infer → evaluate.

Every stage runs as the user would run it, through the real commands in subprocesses
(``train/run.py``, ``export/run.py``, ``infer/run.py``, ``harmonic eval``), so an experiment
proves the command-line interface as well as the library. A stage's output goes to a log file
in its run folder; the terminal shows one progress bar per stage (training: iterations with an
ETA, read from the run's ``log.jsonl``) and a line when it ends. A failed stage stops the
experiment with one line naming its log, after printing the log's tail.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harmonic import atomic
from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a loss and its options (``--loss-option KEY=VALUE``)."""

    name: str
    label: str
    loss: str
    loss_options: tuple[tuple[str, Any], ...] = ()

    def option_args(self) -> list[str]:
        out: list[str] = []
        for key, value in self.loss_options:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            out += ["--loss-option", f"{key}={text}"]
        return out


BASELINE = Variant("baseline", "Baseline", "baseline")
HARMONIC = Variant("harmonic", "HarmonicDet", "harmonic")


@dataclass
class Recipe:
    """How every variant is trained: the same for all arms, so they differ only by the loss."""

    model: str
    epochs: int
    img_size: int
    batch_size: int
    optimizer: str | None = None
    lr: float | None = None
    fpn_channels: int | None = None
    model_options: list[str] = field(default_factory=list)
    backbone_weights: str | None = None
    augment: str | None = None
    workers: int = 1
    device: str = "cpu"
    max_iters_per_epoch: int | None = None

    def train_args(self) -> list[str]:
        args = ["--model", self.model, "--epochs", str(self.epochs), "--batch-size", str(self.batch_size),
                "--img-size", str(self.img_size), "--device", self.device, "--workers", str(self.workers)]
        for flag, value in (("--optimizer", self.optimizer), ("--lr", self.lr), ("--fpn-channels", self.fpn_channels),
                            ("--backbone-weights", self.backbone_weights), ("--augment", self.augment),
                            ("--max-iters-per-epoch", self.max_iters_per_epoch)):
            if value is not None:
                args += [flag, str(value)]
        for opt in self.model_options:
            args += ["--model-option", opt]
        if self.device.startswith("cuda"):
            args.append("--amp")
        return args


@dataclass
class RunResult:
    """One trained, exported and evaluated run: its folder, evaluation report and (seed 0) benchmark."""

    variant: Variant
    seed: int
    run_dir: Path
    report: dict
    bench: dict | None
    seconds: dict[str, float]


@dataclass
class Experiment:
    """All runs of an experiment, per variant name, in seed order, and the validation split used."""

    out: Path
    data_yaml: Path
    val_images: Path
    val_annotations: Path
    names: list[str]
    variants: list[Variant]
    runs: dict[str, list[RunResult]]
    seconds: float


def resolve_device(arg: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if arg != "auto":
        return arg
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def check_output_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable, or raise one line naming it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HarmonicError(f"{out}: --out exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise HarmonicError(f"{out}: --out is not writable ({exc.strerror or exc})") from None
    return out


def check_counts(seeds: int, epochs: int) -> None:
    if seeds < 1:
        raise HarmonicError(f"--seeds must be >= 1, got {seeds}")
    if epochs < 1:
        raise HarmonicError(f"--epochs must be >= 1, got {epochs}")


def validation_split(data_yaml: Path) -> tuple[list[str], Path, Path]:
    """``(names, val images dir, val annotations)`` of a dataset file; no val split is an error."""
    from harmonic.data.dataset_file import load_dataset_config

    cfg = load_dataset_config(data_yaml)
    for split in ("train", "val"):
        if split not in cfg.splits:
            raise HarmonicError(f"{data_yaml}: no '{split}' split (an experiment trains on train and "
                                f"evaluates on val)")
    val = cfg.splits["val"]
    return list(cfg.names), Path(val.images), Path(val.annotations)


def _py(script: str) -> list[str]:
    return [sys.executable, str(ROOT / script)]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _train_progress(log_path: Path) -> tuple[int | None, int | None]:
    """``(iterations done, total)`` from a training ``log.jsonl`` (None when not known yet)."""
    done = total = None
    try:
        text = log_path.read_text()
    except OSError:
        return None, None
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if rec.get("type") == "start":
            total = rec.get("total_iters")
        elif rec.get("type") == "train":
            done = rec.get("iter")
    return done, total


def run_stage(cmd: Sequence[Any], name: str, log_file: Path, train_log: Path | None = None) -> float:
    """Run one stage, its output into ``log_file``; a tqdm bar shows progress. Returns seconds."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(log_file, "w") as fh:
        fh.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        bar = tqdm(total=None, desc=name, unit="it" if train_log else "s", dynamic_ncols=True, leave=False)
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if train_log is not None:
                    done, total = _train_progress(train_log)
                    if total and bar.total != total:
                        bar.total = total
                    if done is not None and done > bar.n:
                        bar.update(done - bar.n)
                else:
                    bar.update(0.5)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        finally:
            bar.close()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = _tail(log_file)
        if tail:
            print(tail, file=sys.stderr)
        raise HarmonicError(f"{log_file}: stage '{name}' failed with exit code {proc.returncode}")
    tqdm.write(f"  {name}: {seconds:.0f} s")
    return seconds


def write_candidates(raw_onnx: Path, images_dir: Path, annotations: Path, out_json: Path,
                     score_min: float = 0.05, batch: int = 8) -> int:
    """Run the raw (pre-NMS) graph with ONNX Runtime and write every candidate with score >= ``score_min``.

    The candidates are the boxes NMS chose among; ``harmonic eval --candidates`` turns them into
    the NMS regret rate. Images are read and letterboxed by the deploy side's own pre-processing.
    Returns the number of candidates.
    """
    import onnxruntime as ort

    from harmonic.boxes import xyxy_to_xywh
    from harmonic.data.letterbox import letterbox, unletterbox_boxes
    from harmonic.runtime.preprocess import decode_image

    gt = json.loads(Path(annotations).read_text())
    sess = ort.InferenceSession(str(raw_onnx), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    meta = sess.get_modelmeta().custom_metadata_map
    size = int(meta["img_size"])
    # the dataset's own category id of each class (metadata "category_ids"), else index + 1
    cat_ids = json.loads(meta["category_ids"]) if meta.get("category_ids") else None
    out_names = [o.name for o in sess.get_outputs()]
    results: list[dict] = []
    images = gt["images"]
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        arrays, infos = [], []
        for im in chunk:
            lb, info = letterbox(decode_image(images_dir / im["file_name"]), size)
            arrays.append(lb.transpose(2, 0, 1).astype(np.float32) / 255.0)
            infos.append(info)
        outs = dict(zip(out_names, sess.run(None, {inp.name: np.stack(arrays)})))
        for im, info, boxes, scores in zip(chunk, infos, outs["boxes"], outs["scores"]):  # [A,4], [A,C]
            a_idx, c_idx = np.nonzero(scores >= score_min)
            if not a_idx.size:
                continue
            xywh = xyxy_to_xywh(unletterbox_boxes(boxes[a_idx], info))
            for (x, y, w, h), c, s in zip(xywh, c_idx, scores[a_idx, c_idx]):
                results.append({"image_id": im["id"], "category_id": int(cat_ids[c]) if cat_ids else int(c) + 1,
                                "bbox": [round(float(x), 2), round(float(y), 2), round(float(w), 2),
                                         round(float(h), 2)],
                                "score": round(float(s), 5)})
    atomic.write_text(out_json, json.dumps(results))
    return len(results)


def run_variant(variant: Variant, seed: int, recipe: Recipe, data_yaml: Path, val_images: Path,
                val_annotations: Path, run_dir: Path, *, bench: bool, save_vis: bool, keep: bool,
                tag: str) -> RunResult:
    """Train, export (NMS graph + raw graph, verified against PyTorch), infer torch-free, evaluate."""
    seconds: dict[str, float] = {}
    logs = run_dir / "logs"
    if not (keep and (run_dir / "best.pt").exists()):
        if run_dir.exists():
            shutil.rmtree(run_dir)
        cmd = _py("train/run.py") + ["--data", data_yaml, "--loss", variant.loss, "--out", run_dir,
                                     "--seed", seed] + recipe.train_args() + variant.option_args()
        seconds["train"] = run_stage(cmd, f"train {tag}", logs / "train.log", run_dir / "log.jsonl")
    onnx_path = run_dir / "model.onnx"
    seconds["export"] = run_stage(_py("export/run.py") + [
        "--checkpoint", run_dir / "best.pt", "--out", onnx_path, "--raw", "--overwrite"],
        f"export {tag}", logs / "export.log")
    infer_out = run_dir / "infer"
    seconds["infer"] = run_stage(_py("infer/run.py") + [
        "--engine", onnx_path, "--images", val_images, "--annotations", val_annotations, "--out", infer_out,
        "--batch", 8] + (["--bench"] if bench else []) + (["--save-vis"] if save_vis else []),
        f"infer {tag}", logs / "infer.log")
    t0 = time.perf_counter()
    cand = run_dir / "candidates.json"
    write_candidates(onnx_path.with_suffix(".raw.onnx"), val_images, val_annotations, cand)
    seconds["eval"] = run_stage([sys.executable, "-m", "harmonic", "eval", "--annotations", val_annotations,
                                 "--detections", infer_out / "detections.json", "--candidates", cand,
                                 "--out", run_dir / "report.json", "--plot", run_dir / "score_iou.png"],
                                f"evaluate {tag}", logs / "eval.log") + time.perf_counter() - t0
    report = json.loads((run_dir / "report.json").read_text())
    bench_json = infer_out / "bench.json"
    return RunResult(variant, seed, run_dir, report,
                     json.loads(bench_json.read_text()) if bench and bench_json.exists() else None, seconds)


def prepare_synthetic(out: Path, num_train: int, num_val: int, img_size: int, classes: int,
                      scale: tuple[float, float], max_objects: int, keep: bool) -> Path:
    """Generate (or, with ``keep``, reuse) the synthetic dataset under ``out/data``."""
    data_yaml = out / "data" / "dataset.yaml"
    if keep and data_yaml.exists():
        return data_yaml
    from harmonic.data.synth import generate

    t0 = time.perf_counter()
    path = generate(out / "data", num_train, num_val, seed=0, img_size=img_size, num_classes=classes,
                    scale=scale, max_objects=max_objects)
    tqdm.write(f"  synthetic data ({num_train} train, {num_val} val): {time.perf_counter() - t0:.0f} s")
    return path


def run_experiment(out: Path, data_yaml: Path, variants: Sequence[Variant], seeds: int, recipe: Recipe,
                   *, keep: bool = False, bench: bool = True, save_vis: bool = True,
                   seeds_per_variant: dict[str, int] | None = None) -> Experiment:
    """Run every variant for seeds ``0..seeds-1``; runs go to ``out/<variant>_s<seed>``.

    ``seeds_per_variant[name]`` (at most ``seeds``) runs fewer seeds of that variant. Seed 0 of each
    variant is benchmarked (``bench``) and drawn (``save_vis``).
    """
    counts = {v.name: min(seeds, (seeds_per_variant or {}).get(v.name, seeds)) for v in variants}
    check_counts(seeds, recipe.epochs)
    if len({v.name for v in variants}) != len(variants) or not variants:
        raise HarmonicError("an experiment needs one or more variants with distinct names")
    names, val_images, val_annotations = validation_split(data_yaml)
    t0 = time.perf_counter()
    runs: dict[str, list[RunResult]] = {v.name: [] for v in variants}
    total = sum(counts.values())
    k = 0
    for seed in range(seeds):
        for variant in variants:
            if seed >= counts[variant.name]:
                continue
            k += 1
            tag = f"{variant.label}, seed {seed} [{k}/{total}]"
            run = run_variant(variant, seed, recipe, data_yaml, val_images, val_annotations,
                              out / f"{variant.name}_s{seed}", bench=bench and seed == 0,
                              save_vis=save_vis and seed == 0, keep=keep, tag=tag)
            runs[variant.name].append(run)
            elapsed = time.perf_counter() - t0
            tqdm.write(f"{variant.label}, seed {seed}: AP {100 * (run.report['coco']['AP'] or 0):.1f}; "
                       f"{k}/{total} runs in {elapsed / 60:.1f} min, about {elapsed / k * (total - k) / 60:.1f} "
                       f"min to go")
    return Experiment(out, data_yaml, val_images, val_annotations, names, list(variants), runs,
                      time.perf_counter() - t0)
