"""The main job: the paper's experiment in miniature, end to end, on synthetic data.

synth -> train (baseline, harmonic) x seeds -> export to ONNX with NMS (verified
against PyTorch) -> torch-free inference with --annotations --bench -> NMS
regret from the raw (pre-NMS) graph -> ``REPORT.md`` with tables and plots.

Every stage runs as the user would run it: the same commands, in subprocesses,
so the demo proves the command-line interface as well as the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harmonic.errors import HarmonicError

log = logging.getLogger("harmonic.demo")

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("baseline", "harmonic")
LABELS = {"baseline": "Baseline", "harmonic": "HarmonicDet"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("harmonic demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output folder (REPORT.md goes here)")
    p.add_argument("--model", default="retinanet_resnet18_fpn")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=1, help="train each loss with seeds 0..N-1; tables give mean ± std")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fpn-channels", type=int, default=128, help="lighter FPN/head so a CPU demo fits in minutes")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--model-option", action="append", default=None, metavar="KEY=VALUE",
                   help="builder options passed to training (default for the CPU demo: anchor_size=16, head_norm=gn: "
                        "small anchors for small images, GroupNorm heads train faster from scratch)")
    p.add_argument("--backbone-weights", default=None, help="DEFAULT (torchvision ImageNet) or a local state dict")
    p.add_argument("--workers", type=int, default=1, help="data-loader workers for training")
    p.add_argument("--data", default=None, help="use this dataset.yaml instead of generating synthetic data")
    p.add_argument("--keep", action="store_true", help="reuse finished stages found in --out")
    return p


def _device(arg: str) -> str:
    if arg != "auto":
        return arg
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _model_options(args: argparse.Namespace) -> list[str]:
    """Builder options for training: the user's, else the CPU-demo defaults (RetinaNet on synthetic data only)."""
    if args.model_option is not None:
        return args.model_option
    if args.data is None and args.model.startswith("retinanet"):
        return ["anchor_size=16", "head_norm=gn"]
    return []


def _run(cmd: Sequence[str], step: str, env: dict[str, str] | None = None) -> float:
    """Run one stage as a subprocess, streaming its output; raise on failure. Returns seconds."""
    print(f"\n=== {step}\n$ {' '.join(str(c) for c in cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise HarmonicError(f"demo step '{step}' failed with exit code {proc.returncode}")
    print(f"--- {step}: done in {seconds:.0f} s", flush=True)
    return seconds


def _py(script: str) -> list[str]:
    return [sys.executable, str(ROOT / script)]


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_candidates(raw_onnx: Path, images_dir: Path, annotations: Path, out_json: Path,
                     score_min: float = 0.05, batch: int = 8) -> int:
    """Run the raw (pre-NMS) graph with ONNX Runtime and write every candidate with score >= ``score_min``.

    The candidates are the boxes NMS chose among; ``harmonic eval --candidates``
    turns them into the NMS regret rate. Returns the number of candidates.
    """
    import cv2
    import onnxruntime as ort

    from harmonic.boxes import xyxy_to_xywh
    from harmonic.data.letterbox import letterbox, unletterbox_boxes

    gt = _load(annotations)
    sess = ort.InferenceSession(str(raw_onnx), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    size = int(inp.shape[-1]) if isinstance(inp.shape[-1], int) else int(sess.get_modelmeta().custom_metadata_map["img_size"])
    out_names = [o.name for o in sess.get_outputs()]
    results: list[dict] = []
    images = gt["images"]
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        arrays, infos = [], []
        for im in chunk:
            bgr = cv2.imread(str(images_dir / im["file_name"]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise HarmonicError(f"{images_dir / im['file_name']}: cannot read image")
            lb, info = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)
            arrays.append(lb.transpose(2, 0, 1).astype(np.float32) / 255.0)
            infos.append(info)
        outs = dict(zip(out_names, sess.run(None, {inp.name: np.stack(arrays)})))
        boxes_b, scores_b = outs["boxes"], outs["scores"]  # [B,A,4], [B,A,C]
        for im, info, boxes, scores in zip(chunk, infos, boxes_b, scores_b):
            a_idx, c_idx = np.nonzero(scores >= score_min)
            if not a_idx.size:
                continue
            xywh = xyxy_to_xywh(unletterbox_boxes(boxes[a_idx], info))
            for (x, y, w, h), c, s in zip(xywh, c_idx, scores[a_idx, c_idx]):
                results.append({"image_id": im["id"], "category_id": int(c) + 1,
                                "bbox": [round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2)],
                                "score": round(float(s), 5)})
    out_json.write_text(json.dumps(results))
    return len(results)


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else None


# rows of the paper-style table: (label, path into report.json, scale to %)
METRICS: list[tuple[str, tuple[str, ...], float]] = [
    ("AP", ("coco", "AP"), 100), ("AP50", ("voc", "AP50"), 100), ("AP60", ("voc", "AP60"), 100),
    ("AP70", ("voc", "AP70"), 100), ("AP80", ("voc", "AP80"), 100), ("AP90", ("voc", "AP90"), 100),
    ("AP50:90 (VOC-style)", ("voc", "mean"), 100), ("AP75", ("coco", "AP75"), 100),
    ("Spearman ρ(score, IoU) ↑", ("consistency", "spearman"), 1),
    ("Kendall τ(score, IoU) ↑", ("consistency", "kendall"), 1),
    ("AIC = mean abs(score − IoU) ↓", ("consistency", "aic"), 1),
    ("harmonious fraction @0.5 ↑", ("consistency", "harmonious_0.5"), 1),
    ("harmonious fraction @0.7 ↑", ("consistency", "harmonious_0.7"), 1),
    ("NMS regret rate ↓", ("regret", "rate"), 1),
]


def _get(report: dict, path: tuple[str, ...]) -> float | None:
    cur = report
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return float(cur) if isinstance(cur, (int, float)) else None


def metrics_table(reports: dict[str, list[dict]]) -> tuple[str, dict[str, dict[str, float | None]]]:
    """Markdown table: one column per loss (mean ± std over seeds) and the delta. Returns (markdown, means)."""
    seeds = len(next(iter(reports.values())))
    head = "| metric | " + " | ".join(LABELS[k] for k in reports) + " | Δ (HarmonicDet − Baseline) |"
    lines = [head, "|" + "---|" * (len(reports) + 2)]
    means: dict[str, dict[str, float | None]] = {k: {} for k in reports}
    for label, path, scale in METRICS:
        cells = []
        for loss, runs in reports.items():
            m, s = _mean_std([_get(r, path) for r in runs])
            means[loss][label] = None if m is None else m * scale
            if m is None:
                cells.append("n/a")
            else:
                cells.append(f"{m * scale:.2f}" + (f" ± {s * scale:.2f}" if s is not None else ""))
        b, h = means.get("baseline", {}).get(label), means.get("harmonic", {}).get(label)
        delta = "n/a" if b is None or h is None else f"{h - b:+.2f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {delta} |")
    note = f"\nAP rows in %, {seeds} seed(s)" + (" (mean ± std)" if seeds > 1 else "") + "."
    return "\n".join(lines) + note, means


def latency_table(benches: dict[str, dict]) -> str:
    """Markdown table of the inference benchmark (``bench.json`` of ``infer/run.py --bench``, first seed)."""
    rows = ["| run | backend | device | batch | engine-only p50 ms/batch | end-to-end p50 ms/batch "
            "| engine-only img/s | end-to-end img/s | end-to-end / engine-only |",
            "|---|---|---|---|---|---|---|---|---|"]

    def f(v: float | None, digits: int = 1) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    for loss, b in benches.items():
        eng, e2e = b.get("engine_only", {}), b.get("end_to_end", {})
        eng_p50 = eng.get("latency_ms_per_batch", {}).get("p50")
        e2e_p50 = e2e.get("stages", {}).get("end_to_end", {}).get("per_batch", {}).get("p50")
        ratio = b.get("end_to_end_over_engine_only")
        rows.append(f"| {LABELS[loss]} | {b.get('backend', '?')} | {b.get('device', '?')} | {b.get('batch', '?')} | "
                    f"{f(eng_p50, 2)} | {f(e2e_p50, 2)} | {f(eng.get('throughput_img_s'))} | "
                    f"{f(e2e.get('throughput_img_s'))} | {'n/a' if ratio is None else f'{100 * ratio:.0f}%'} |")
    return "\n".join(rows)


def _montage(vis_dirs: dict[str, Path], out_png: Path, count: int = 3) -> bool:
    """Stack the first ``count`` drawn images of each run side by side (rows: images, columns: runs)."""
    import cv2

    lists = {k: sorted(p for p in d.glob("*") if p.suffix.lower() in {".jpg", ".png"}) for k, d in vis_dirs.items()}
    n = min([count] + [len(v) for v in lists.values()])
    if n == 0:
        return False
    rows = []
    for i in range(n):
        tiles = []
        for loss, files in lists.items():
            img = cv2.imread(str(files[i]))
            img = cv2.resize(img, (320, int(320 * img.shape[0] / img.shape[1])))
            cv2.putText(img, LABELS[loss], (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2)
            tiles.append(img)
        h = min(t.shape[0] for t in tiles)
        rows.append(np.concatenate([t[:h] for t in tiles], axis=1))
    w = min(r.shape[1] for r in rows)
    cv2.imwrite(str(out_png), np.concatenate([r[:, :w] for r in rows], axis=0))
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = (ROOT / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(args.device)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    # 1. data
    if args.data:
        data_yaml = Path(args.data).resolve()
    else:
        data_yaml = out / "data" / "dataset.yaml"
        if not (args.keep and data_yaml.exists()):
            timings["synth"] = _run([sys.executable, "-m", "harmonic",
                "synth", "--out", out / "data", "--num-train", args.num_train, "--num-val", args.num_val,
                "--seed", 0, "--img-size", args.img_size, "--classes", 3], "generate synthetic data", env)
    from harmonic.data.dataset_file import load_dataset_config

    cfg = load_dataset_config(data_yaml)
    val = cfg.splits["val"]

    reports: dict[str, list[dict]] = {k: [] for k in LOSSES}
    benches: dict[str, dict] = {}
    runs: dict[str, list[Path]] = {k: [] for k in LOSSES}
    for seed in range(args.seeds):
        for loss in LOSSES:
            run = out / f"{loss}_s{seed}"
            runs[loss].append(run)
            tag = f"{LABELS[loss]}, seed {seed}"
            # 2. train
            if not (args.keep and (run / "best.pt").exists()):
                if run.exists():
                    shutil.rmtree(run)
                cmd = _py("train/run.py") + [
                    "--data", data_yaml, "--model", args.model, "--loss", loss, "--epochs", args.epochs,
                    "--batch-size", args.batch_size, "--img-size", args.img_size, "--out", run,
                    "--seed", seed, "--device", device, "--fpn-channels", args.fpn_channels]
                cmd += ["--optimizer", "adamw", "--lr", args.lr, "--warmup-iters", 50]
                for opt in _model_options(args):
                    cmd += ["--model-option", opt]
                if args.backbone_weights:
                    cmd += ["--backbone-weights", args.backbone_weights]
                cmd += ["--workers", args.workers]
                if device == "cuda":
                    cmd.append("--amp")
                timings[f"train {loss} s{seed}"] = _run(cmd, f"train {tag}", env)
            # 3. export (verified against PyTorch by default) + the raw graph for NMS regret
            onnx_path = run / "model.onnx"
            timings[f"export {loss} s{seed}"] = _run(_py("export/run.py") + [
                "--checkpoint", run / "best.pt", "--out", onnx_path, "--raw", "--overwrite"],
                f"export {tag} to ONNX (+NMS) and verify against PyTorch", env)
            # 4. torch-free inference with accuracy, consistency and benchmark
            infer_out = run / "infer"
            timings[f"infer {loss} s{seed}"] = _run(_py("infer/run.py") + [
                "--engine", onnx_path, "--images", val.images, "--annotations", val.annotations,
                "--out", infer_out, "--bench", "--batch", 8] + (["--save-vis"] if seed == 0 else []),
                f"infer {tag} (ONNX Runtime, torch-free)", env)
            # 5. NMS regret from the raw graph's candidates
            cand = run / "candidates.json"
            n = write_candidates(onnx_path.with_suffix(".raw.onnx"), val.images, val.annotations, cand)
            log.info("%s: %d pre-NMS candidates", tag, n)
            timings[f"eval {loss} s{seed}"] = _run([sys.executable, "-m", "harmonic",
                "eval", "--annotations", val.annotations, "--detections", infer_out / "detections.json",
                "--candidates", cand, "--out", run / "report.json", "--plot", run / "score_iou.png"],
                f"evaluate {tag} (accuracy, consistency, NMS regret)", env)
            reports[loss].append(_load(run / "report.json"))
            if seed == 0:
                benches[loss] = _load(infer_out / "bench.json")

    # 6. report
    write_report(out, args, device, reports, benches, runs, timings, time.perf_counter() - t_start)
    return 0


def write_report(out: Path, args: argparse.Namespace, device: str, reports: dict[str, list[dict]],
                 benches: dict[str, dict], runs: dict[str, list[Path]], timings: dict[str, float],
                 total_s: float) -> Path:
    from harmonic.evaluation import plots

    table, means = metrics_table(reports)
    first = {k: v[0] for k, v in runs.items()}
    plots.scatter_side_by_side([first["baseline"] / "report.json", first["harmonic"] / "report.json"],
                               out / "score_iou_side_by_side.png", labels=[LABELS[k] for k in LOSSES])
    plots.training_curves([first["baseline"] / "log.jsonl", first["harmonic"] / "log.jsonl"],
                          out / "training_curves.png", labels=[LABELS[k] for k in LOSSES])
    has_vis = _montage({k: first[k] / "infer" / "vis" for k in LOSSES}, out / "examples.png")

    ap_b, ap_h = means["baseline"]["AP"], means["harmonic"]["AP"]
    rho_b, rho_h = means["baseline"]["Spearman ρ(score, IoU) ↑"], means["harmonic"]["Spearman ρ(score, IoU) ↑"]
    verdict = []
    if ap_b is not None and ap_h is not None:
        verdict.append(f"HarmonicDet {'beats' if ap_h > ap_b else 'does not beat'} the baseline on COCO AP "
                       f"({ap_h:.2f} vs {ap_b:.2f}, {ap_h - ap_b:+.2f}).")
    if rho_b is not None and rho_h is not None:
        verdict.append(f"Score–IoU rank correlation (Spearman) {'improves' if rho_h > rho_b else 'does not improve'}: "
                       f"{rho_b:.3f} → {rho_h:.3f}.")
    if args.seeds == 1:
        verdict.append("One seed only: differences this small can be noise; run `--seeds 3` for mean ± std.")
    import platform

    lines = [
        "# HarmonicDet demo report", "",
        f"Model `{args.model}` (FPN/head channels {args.fpn_channels}), {args.epochs} epochs, image size {args.img_size}, "
        f"batch {args.batch_size}, {args.seeds} seed(s), device `{device}`, machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores. Data: `{args.data or 'harmonic synth'}` "
        f"({'generated: ' + str(args.num_train) + ' train / ' + str(args.num_val) + ' val images' if not args.data else ''}). "
        f"Total time {total_s / 60:.1f} min.", "",
        "## Verdict (as measured)", "", *[f"- {v}" for v in verdict], "",
        "## Accuracy and score–IoU consistency", "",
        "Accuracy from COCO evaluation of the exported ONNX model's detections (torch-free inference path); "
        "consistency over kept detections matched to ground truth; NMS regret from the raw (pre-NMS) graph.", "",
        table, "",
        "## Latency (ONNX Runtime, this machine)", "",
        "Engine-only is the graph call alone; end-to-end includes decoding, letterboxing and post-processing.", "",
        latency_table(benches), "",
        "## Plots", "",
        "Score vs IoU of kept detections (the harmonious region is where both are high; paper Fig. 5):", "",
        "![score-IoU](score_iou_side_by_side.png)", "",
        "Harmonic factors 1+β_r, 1+β_c and AIC during training (paper Fig. 4):", "",
        "![training curves](training_curves.png)", "",
    ]
    if has_vis:
        lines += ["Validation images with kept detections:", "", "![examples](examples.png)", ""]
    lines += ["## Stage times", "", "| stage | seconds |", "|---|---|",
              *[f"| {k} | {v:.0f} |" for k, v in timings.items()], "",
              "## Files", "", *[f"- `{k}`: " + ", ".join(f"`{p.relative_to(out)}`" for p in v) for k, v in runs.items()]]
    report = out / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    print("\n" + table)
    print(f"\nReport: {report}")
    for v in verdict:
        print(v)
    return report


if __name__ == "__main__":
    from harmonic.cli import run_guarded

    sys.exit(run_guarded(main, sys.argv[1:]))
