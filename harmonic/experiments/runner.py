"""The experiment runner: for each variant and seed, train → export → infer → evaluate.

Every stage runs as the user would run it, through the real commands in subprocesses
(``train/run.py``, ``export/run.py``, ``infer/run.py``, ``harmonic eval``), so an experiment
proves the command-line interface as well as the library. A stage's output goes to a log file
in its run folder; the terminal shows one progress bar per stage (training: iterations with an
ETA, read from the run's ``log.jsonl``) and a line when it ends. A failed stage stops the
experiment with one line naming its log (after printing the log's tail) and saying how to go on.

Training selects ``best.pt`` on ``val``; the comparison reports on ``test`` (``val``, with a
warning, when the dataset file has no usable test split). The runner infers and evaluates exactly
the reported split's annotated images: it writes their list and a COCO file of their ground truth
(the dataset's own category ids) under ``OUT/eval/``, whatever the split's format (COCO, VOC, YOLO).

Each run folder keeps ``stages.json``: per stage, a hash of its command and of its input files.
Rerunning with the same ``--out`` reuses every stage whose record matches and whose outputs exist,
and redoes only what is missing or stale (a changed recipe, dataset or upstream output).
"""

from __future__ import annotations

import hashlib
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
    """All runs of an experiment, per variant name, in seed order, and the split they are scored on.

    ``eval_split`` is ``"test"`` (or ``"val"`` when the dataset has no usable test split);
    ``eval_images`` is that split's images folder and ``eval_annotations`` a COCO json of exactly its
    annotated (readable) images, with the dataset's own category ids, written by the runner.
    """

    out: Path
    data_yaml: Path
    eval_split: str
    eval_images: Path
    eval_annotations: Path
    names: list[str]
    variants: list[Variant]
    runs: dict[str, list[RunResult]]
    seconds: float


@dataclass
class EvalData:
    """What :func:`evaluation_split` found: the split to report on, its readable annotated images
    (``records``, ``category_ids`` as in :func:`harmonic.data.readers.read_split_with_ids`), the
    folder's other image files (``others``), the images skipped as unreadable, and warnings."""

    names: list[str]
    split: str
    images: Path
    records: list[Any]
    category_ids: list[int]
    others: int = 0
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)


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


def _image_files(records: Sequence[Any], images_dir: Path) -> set[Path]:
    return {(images_dir / r.file_name).resolve() for r in records}


def _split_records(cfg: Any, split: str) -> tuple[list[Any], list[int]]:
    from harmonic.data.readers import read_split_with_ids

    return read_split_with_ids(cfg.splits[split], list(cfg.names))


def evaluation_split(data_yaml: Path, prefer: str = "test") -> EvalData:
    """Check a dataset file for an experiment and choose the split its comparison reports on.

    ``train`` and ``val`` must exist and be readable (training selects ``best.pt`` on val).
    ``prefer`` (``test``) is reported on when present with annotated images; else ``val``, with a
    warning. Test images that are also train or val images (the same resolved file) are an error.
    The chosen split's images get the cheap header check (:func:`harmonic.data.checks.image_problem`):
    unreadable ones are skipped, counted and named in a warning; none readable is an error; the
    evaluator must be able to load what remains. Every problem is one :class:`HarmonicError` line.
    """
    from harmonic.contract import IMAGE_SUFFIXES
    from harmonic.data.checks import image_problem
    from harmonic.data.dataset_file import load_dataset_config
    from harmonic.data.readers import records_to_coco
    from harmonic.evaluation.inputs import load_ground_truth

    cfg = load_dataset_config(data_yaml)
    for split in ("train", "val"):
        if split not in cfg.splits:
            raise HarmonicError(f"{data_yaml}: no '{split}' split (an experiment trains on train, selects "
                                f"best.pt on val and reports on test)")
    read = {split: _split_records(cfg, split) for split in ("train", "val")}
    for split, (records, _) in read.items():
        if not records:
            raise HarmonicError(f"{cfg.splits[split].annotations}: the {split} split has no images")
    warnings: list[str] = []
    chosen = "val"
    if prefer in cfg.splits and prefer != "val":
        records, ids = _split_records(cfg, prefer)
        if not records or not any((~r.ignore).any() for r in records):
            warnings.append(f"{data_yaml}: the '{prefer}' split has no annotated objects; reporting on val, "
                            "the split that also selected best.pt (optimistic)")
        else:
            mine = _image_files(records, cfg.splits[prefer].images)
            for other in ("train", "val"):
                shared = mine & _image_files(read[other][0], cfg.splits[other].images)
                if shared:
                    raise HarmonicError(f"{data_yaml}: the '{prefer}' split shares {len(shared)} image file(s) with "
                                        f"'{other}' (e.g. {sorted(shared)[0]}); a test split must be held out")
            read[prefer] = (records, ids)
            chosen = prefer
    else:
        warnings.append(f"{data_yaml}: no '{prefer}' split; reporting on val, the split that also selected "
                        f"best.pt (optimistic: add a held-out '{prefer}' split to the dataset file)")
    spec = cfg.splits[chosen]
    records, ids = read[chosen]
    kept, skipped = [], 0
    for r in records:
        problem = image_problem(spec.images / r.file_name, r.width, r.height)
        if problem is None:
            kept.append(r)
        else:
            skipped += 1
            warnings.append(f"{spec.images / r.file_name}: {problem}; left out of the {chosen} evaluation")
    if not kept:
        raise HarmonicError(f"{spec.images}: none of the {len(records)} image(s) of the {chosen} split can be read")
    load_ground_truth(records_to_coco(kept, list(cfg.names), ids))  # the evaluator takes it, or one line why
    listed = {r.file_name for r in records}
    others = sum(1 for f in spec.images.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                 and f.relative_to(spec.images).as_posix() not in listed)
    return EvalData(list(cfg.names), chosen, spec.images, kept, ids, others, skipped, warnings)


def write_eval_files(out: Path, data: EvalData) -> tuple[Path, Path]:
    """``OUT/eval/<split>.json`` (COCO, the dataset's own category ids) and ``OUT/eval/<split>.images.txt``
    (their file names, relative to the split's images folder): exactly the images every stage uses."""
    from harmonic.data.readers import records_to_coco

    folder = Path(out) / "eval"
    gt = atomic.write_text(folder / f"{data.split}.json",
                           json.dumps(records_to_coco(data.records, data.names, data.category_ids)))
    listing = atomic.write_text(folder / f"{data.split}.images.txt",
                                "".join(f"{r.file_name}\n" for r in data.records))
    return gt, listing


# ---------------------------------------------------------------- stage records (reuse what is done)

def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (``"missing"`` when absent)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return "missing"
    return h.hexdigest()


def tree_fingerprint(path: Path) -> str:
    """A folder's (or file's) names, sizes and modification times, hashed: cheap for 100k images."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            h.update(f"{os.path.relpath(os.path.join(root, name), path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def listed_fingerprint(images_dir: Path, image_list: Path) -> str:
    """The listed images' names, sizes and modification times, hashed (the folder's other files don't count)."""
    h = hashlib.sha256()
    for name in Path(image_list).read_text(encoding="utf-8").splitlines():
        try:
            st = (Path(images_dir) / name).stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{name}\0missing\n".encode())
    return h.hexdigest()


def dataset_fingerprint(data_yaml: Path, splits: Sequence[str] = ("train", "val")) -> dict[str, str]:
    """The dataset file's bytes and each split's annotations and images (names, sizes, times)."""
    from harmonic.data.dataset_file import load_dataset_config

    cfg = load_dataset_config(data_yaml)
    out = {"dataset_file": file_fingerprint(cfg.path)}
    for split in splits:
        if split in cfg.splits:
            spec = cfg.splits[split]
            out[f"{split}.annotations"] = tree_fingerprint(spec.annotations)
            out[f"{split}.images"] = tree_fingerprint(spec.images)
    return out


def stage_key(*parts: Any) -> str:
    """sha256 of a stage's command and input fingerprints (JSON, keys sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class StageRecord:
    """``RUN/stages.json``: per stage, the key of the inputs it last finished with."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "stages.json"
        try:
            self.stages: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.stages = {}
        if not isinstance(self.stages, dict):
            self.stages = {}

    def done(self, stage: str, key: str, outputs: Sequence[Path]) -> bool:
        """The stage finished with these inputs and its outputs are still there."""
        rec = self.stages.get(stage)
        return isinstance(rec, dict) and rec.get("key") == key and all(Path(o).exists() for o in outputs)

    def mark(self, stage: str, key: str, seconds: float) -> None:
        self.stages[stage] = {"key": key, "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic.write_text(self.path, json.dumps(self.stages, indent=1))


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


RESUME_HINT = "rerun the same command to go on: finished stages are reused"
# The definition of the candidates and of the evaluation's metrics: part of those stages' keys, so a
# run folder made under an earlier definition re-runs them (and only them).
EVAL_VERSION = 2


def run_stage(cmd: Sequence[Any], name: str, log_file: Path, train_log: Path | None = None,
              hint: str | None = None) -> float:
    """Run one stage, its output into ``log_file``; a tqdm bar shows progress. Returns seconds.

    A failure is one :class:`HarmonicError` line naming the log, plus ``hint`` (how to go on).
    """
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
        raise HarmonicError(f"{log_file}: stage '{name}' failed with exit code {proc.returncode}"
                            + (f"; {hint}" if hint else ""))
    tqdm.write(f"  {name}: {seconds:.0f} s")
    return seconds


def write_candidates(raw_onnx: Path, images_dir: Path, annotations: Path, out_json: Path,
                     batch: int = 8) -> int:
    """Run the raw (pre-NMS) graph with ONNX Runtime and write every candidate the graph's NMS sees.

    A candidate is an (anchor, class) pair scoring at least the graph's own score threshold (its
    metadata ``score_threshold``, the exported operating point's ``conf``), the floor the NMS inside
    the graph applies, so the NMS-cluster metrics see the same boxes NMS chose among, whatever the
    scale of the scores. The graph's per-level candidate budget (e.g. the top 1000 per FPN level) is
    not reproduced: where it binds, lower-scored candidates the NMS never saw are written too, and a
    warning counts the images with more candidates than the NMS graph's cap. Images are read and
    letterboxed by the deploy side's own pre-processing. Returns the number of candidates.
    """
    import onnxruntime as ort

    from harmonic.boxes import xyxy_to_xywh
    from harmonic.contract import RAW_OUTPUT_NAMES
    from harmonic.data.images import ImageDecodeError, decode_image
    from harmonic.data.letterbox import letterbox, unletterbox_boxes

    gt = json.loads(Path(annotations).read_text())
    sess = ort.InferenceSession(str(raw_onnx), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    meta = sess.get_modelmeta().custom_metadata_map
    size = int(meta["img_size"])
    # the dataset's own category id of each class (metadata "category_ids"), else index + 1
    cat_ids = json.loads(meta["category_ids"]) if meta.get("category_ids") else None
    score_min = float(meta.get("score_threshold", 0.0))
    nms_graph = Path(raw_onnx).with_suffix("").with_suffix(".onnx")  # model.raw.onnx -> model.onnx
    cap = _nms_topk(nms_graph)
    over_cap = 0
    out_names = [o.name for o in sess.get_outputs()]
    results: list[dict] = []
    images = gt["images"]
    skipped = 0
    for start in range(0, len(images), batch):
        chunk, arrays, infos = [], [], []
        for im in images[start:start + batch]:
            try:
                lb, info = letterbox(decode_image(images_dir / im["file_name"]), size)
            except ImageDecodeError as exc:  # named, counted, and the run goes on
                log.warning("candidates: skipped %s", exc)
                skipped += 1
                continue
            chunk.append(im)
            arrays.append(lb.transpose(2, 0, 1).astype(np.float32) / 255.0)
            infos.append(info)
        if not chunk:
            continue
        outs = dict(zip(out_names, sess.run(None, {inp.name: np.stack(arrays)})))
        for im, info, boxes, scores in zip(chunk, infos, *(outs[n] for n in RAW_OUTPUT_NAMES)):  # [A,4], [A,C]
            a_idx, c_idx = np.nonzero(scores >= score_min)
            over_cap += cap is not None and a_idx.size > cap
            if not a_idx.size:
                continue
            xywh = xyxy_to_xywh(unletterbox_boxes(boxes[a_idx], info))
            for (x, y, w, h), c, s in zip(xywh, c_idx, scores[a_idx, c_idx]):
                results.append({"image_id": im["id"], "category_id": int(cat_ids[c]) if cat_ids else int(c) + 1,
                                "bbox": [round(float(x), 2), round(float(y), 2), round(float(w), 2),
                                         round(float(h), 2)],
                                "score": float(f"{s:.7g}")})  # float32's precision: no ties made here
    if images and skipped == len(images):
        raise HarmonicError(f"{images_dir}: none of the {len(images)} image(s) could be read for the candidates")
    if skipped:
        log.warning("candidates: %d of %d image(s) unreadable and skipped", skipped, len(images))
    if over_cap:
        log.warning("candidates: %d image(s) have more candidates than the NMS graph's cap of %d; the graph's "
                    "NMS saw only its top ones", over_cap, cap)
    atomic.write_text(out_json, json.dumps(results))
    return len(results)


def _nms_topk(nms_graph: Path) -> int | None:
    """The ``nms_topk`` cap an exported NMS graph records in its metadata (None when absent or unreadable)."""
    try:
        import onnxruntime as ort

        meta = ort.InferenceSession(str(nms_graph), providers=["CPUExecutionProvider"]).get_modelmeta()
        return int(meta.custom_metadata_map["nms_topk"])
    except Exception:  # noqa: BLE001 - the cap only sharpens a warning
        return None


def run_variant(variant: Variant, seed: int, recipe: Recipe, data_yaml: Path, eval_images: Path,
                eval_annotations: Path, image_list: Path, run_dir: Path, *, bench: bool, save_vis: bool,
                keep: bool = False, fresh: bool = False, tag: str, data_fp: dict[str, str] | None = None,
                reused: list[str] | None = None) -> RunResult:
    """Train, export (NMS graph + raw graph, verified against PyTorch), infer torch-free, evaluate.

    A stage whose :class:`StageRecord` matches its inputs is reused (listed in ``reused``) unless
    ``fresh``; ``keep`` also reuses a finished training of an older run without a record.
    Infer and evaluation see exactly the images of ``image_list`` (relative to ``eval_images``).
    """
    seconds: dict[str, float] = {}
    logs = run_dir / "logs"
    reused = reused if reused is not None else []
    record = StageRecord(run_dir) if not fresh else None
    data_fp = data_fp if data_fp is not None else dataset_fingerprint(data_yaml)
    hint = f"the finished stages are kept in {run_dir}: {RESUME_HINT}"

    def stage(name: str, key: str, outputs: Sequence[Path], fn: Any) -> None:
        nonlocal record
        if record is not None and record.done(name, key, outputs):
            reused.append(f"{name} {tag}")
            tqdm.write(f"  {name} {tag}: reused (inputs and recipe unchanged)")
            return
        t0 = time.perf_counter()
        fn()
        seconds[name] = time.perf_counter() - t0
        if record is None:
            record = StageRecord(run_dir)
        record.mark(name, key, seconds[name])

    # train: the recipe, the variant, the seed and the training data
    train_cmd = _py("train/run.py") + ["--data", data_yaml, "--loss", variant.loss, "--out", run_dir,
                                       "--seed", seed, "--skip-bad-images"] + recipe.train_args() + variant.option_args()
    train_key = stage_key("train", [str(c) for c in train_cmd[2:]], data_fp)
    best = run_dir / "best.pt"
    if keep and record is not None and "train" not in record.stages and best.exists():
        record.mark("train", train_key, 0.0)  # an older run's finished training, adopted as asked (--keep)

    def train() -> None:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a stale or unfinished training: start clean
        if record is not None:
            record.stages.clear()
        seconds["train"] = run_stage(train_cmd, f"train {tag}", logs / "train.log", run_dir / "log.jsonl",
                                     hint=f"{RESUME_HINT} (training restarts)")
    stage("train", train_key, [best, run_dir / "log.jsonl"], train)

    onnx_path = run_dir / "model.onnx"
    raw_path = onnx_path.with_suffix(".raw.onnx")
    export_cmd = _py("export/run.py") + ["--checkpoint", best, "--out", onnx_path, "--raw", "--overwrite"]
    stage("export", stage_key("export", [str(c) for c in export_cmd[2:]], file_fingerprint(best)),
          [onnx_path, raw_path],
          lambda: run_stage(export_cmd, f"export {tag}", logs / "export.log", hint=hint))

    infer_out = run_dir / "infer"
    infer_cmd = _py("infer/run.py") + [
        "--engine", onnx_path, "--images", eval_images, "--image-list", image_list,
        "--annotations", eval_annotations, "--out", infer_out, "--batch", 8] + (
        ["--bench"] if bench else []) + (["--save-vis"] if save_vis else [])
    eval_fp = [file_fingerprint(eval_annotations), listed_fingerprint(eval_images, image_list)]
    stage("infer", stage_key("infer", [str(c) for c in infer_cmd[2:]], file_fingerprint(onnx_path), eval_fp),
          [infer_out / "detections.json"] + ([infer_out / "bench.json"] if bench else []),
          lambda: run_stage(infer_cmd, f"infer {tag}", logs / "infer.log", hint=hint))

    cand = run_dir / "candidates.json"

    def candidates() -> None:
        t0 = time.perf_counter()
        try:
            n = write_candidates(raw_path, eval_images, eval_annotations, cand)
        except HarmonicError as exc:
            raise HarmonicError(f"{exc}; {hint}") from None
        tqdm.write(f"  candidates {tag}: {n} pre-NMS boxes, {time.perf_counter() - t0:.0f} s")
    stage("candidates", stage_key("candidates", EVAL_VERSION, file_fingerprint(raw_path), eval_fp), [cand],
          candidates)

    eval_cmd = [sys.executable, "-m", "harmonic", "eval", "--annotations", eval_annotations,
                "--detections", infer_out / "detections.json", "--candidates", cand,
                "--out", run_dir / "report.json", "--plot", run_dir / "score_iou.png"]
    stage("eval", stage_key("eval", EVAL_VERSION, [str(c) for c in eval_cmd[3:]], file_fingerprint(infer_out / "detections.json"),
                            file_fingerprint(cand), file_fingerprint(eval_annotations)),
          [run_dir / "report.json"],
          lambda: run_stage(eval_cmd, f"evaluate {tag}", logs / "eval.log", hint=hint))
    if "candidates" in seconds:  # the table's eval column: candidates + harmonic eval
        seconds["eval"] = seconds.pop("candidates") + seconds.get("eval", 0.0)
    report = json.loads((run_dir / "report.json").read_text())
    bench_json = infer_out / "bench.json"
    return RunResult(variant, seed, run_dir, report,
                     json.loads(bench_json.read_text()) if bench and bench_json.exists() else None, seconds)


def prepare_synthetic(out: Path, num_train: int, num_val: int, img_size: int, classes: int,
                      scale: tuple[float, float], max_objects: int, keep: bool = False, num_test: int = 0,
                      fresh: bool = False) -> Path:
    """Generate the synthetic dataset under ``out/data``, or reuse the one there when it was made with the
    same settings (its ``stages.json``; ``keep``: whatever complete set is there)."""
    data_dir = out / "data"
    data_yaml = data_dir / "dataset.yaml"
    settings = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "img_size": img_size,
                "classes": classes, "scale": list(scale), "max_objects": max_objects, "seed": 0}
    key = stage_key("synth", settings)
    record = StageRecord(data_dir)
    if data_yaml.exists() and not fresh and (keep or record.done("synth", key, [data_yaml])):
        tqdm.write(f"  synthetic data: reused {data_yaml}")
        return data_yaml
    from harmonic.data.synth import generate

    t0 = time.perf_counter()
    path = generate(data_dir, num_train, num_val, seed=0, img_size=img_size, num_classes=classes,
                    scale=scale, max_objects=max_objects, num_test=num_test)
    StageRecord(data_dir).mark("synth", key, time.perf_counter() - t0)
    tqdm.write(f"  synthetic data ({num_train} train, {num_val} val, {num_test} test): "
               f"{time.perf_counter() - t0:.0f} s")
    return path


def run_experiment(out: Path, data_yaml: Path, variants: Sequence[Variant], seeds: int, recipe: Recipe,
                   *, keep: bool = False, fresh: bool = False, bench: bool = True, save_vis: bool = True,
                   eval_data: EvalData | None = None, seeds_per_variant: dict[str, int] | None = None) -> Experiment:
    """Run every variant for seeds ``0..seeds-1``; runs go to ``out/<variant>_s<seed>``.

    ``seeds_per_variant[name]`` (at most ``seeds``) runs fewer seeds of that variant. Seed 0 of each
    variant is benchmarked (``bench``) and drawn (``save_vis``). The comparison is
    scored on ``eval_data`` (default: :func:`evaluation_split` of ``data_yaml``). Finished stages
    are reused (see :func:`run_variant`); ``fresh`` redoes everything.
    """
    counts = {v.name: min(seeds, (seeds_per_variant or {}).get(v.name, seeds)) for v in variants}
    check_counts(seeds, recipe.epochs)
    if len({v.name for v in variants}) != len(variants) or not variants:
        raise HarmonicError("an experiment needs one or more variants with distinct names")
    data = eval_data if eval_data is not None else evaluation_split(data_yaml)
    report_warnings(data)
    eval_annotations, image_list = write_eval_files(out, data)
    data_fp = dataset_fingerprint(data_yaml)
    t0 = time.perf_counter()
    runs: dict[str, list[RunResult]] = {v.name: [] for v in variants}
    reused: list[str] = []
    total = sum(counts.values())
    k = 0
    for seed in range(seeds):
        for variant in variants:
            if seed >= counts[variant.name]:
                continue
            k += 1
            tag = f"{variant.label}, seed {seed} [{k}/{total}]"
            run = run_variant(variant, seed, recipe, data_yaml, data.images, eval_annotations, image_list,
                              out / f"{variant.name}_s{seed}", bench=bench and seed == 0,
                              save_vis=save_vis and seed == 0, keep=keep, fresh=fresh, tag=tag,
                              data_fp=data_fp, reused=reused)
            runs[variant.name].append(run)
            elapsed = time.perf_counter() - t0
            tqdm.write(f"{variant.label}, seed {seed}: AP {100 * (run.report['coco']['AP'] or 0):.1f} on "
                       f"{data.split}; {k}/{total} runs in {elapsed / 60:.1f} min, about "
                       f"{elapsed / k * (total - k) / 60:.1f} min to go")
    if reused:
        tqdm.write(f"reused {len(reused)} finished stage(s) from {out} (inputs and recipe unchanged; "
                   "a new --out redoes everything)")
    return Experiment(out, data_yaml, data.split, data.images, eval_annotations, data.names, list(variants),
                      runs, time.perf_counter() - t0)


def report_warnings(data: EvalData) -> None:
    """Print what :func:`evaluation_split` found worth knowing (fallback to val, skipped or extra files)."""
    for w in data.warnings:
        tqdm.write(f"warning: {w}", file=sys.stderr)
    if data.others:
        tqdm.write(f"  {data.split}: {len(data.records)} annotated image(s) evaluated; {data.others} other image "
                   f"file(s) in {data.images} are not in its annotations and are left out")
