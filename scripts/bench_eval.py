"""Time ``harmonic.evaluation.evaluate`` against pycocotools alone on a generated COCO-sized set.

    python scripts/bench_eval.py [--images 5000] [--dets 100] [--repeats 3]

pycocotools alone = COCO index of the ground truth + ``loadRes`` + ``COCOeval``
evaluate/accumulate/summarize (the bare COCO AP). ``evaluate`` does all of that's
work plus validation, the VOC-style APs, per-class AP and the consistency metrics.
Prints the median seconds of each and their ratio (target <= 1.3).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmonic.evaluation import evaluate  # noqa: E402


def generate(num_images: int, dets_per_image: int, gt_per_image: int = 10, num_classes: int = 10,
             seed: int = 0, size: int = 640) -> tuple[dict, list[dict]]:
    """Random GT boxes; detections are jittered copies of them (70%, sometimes with the wrong class)
    and random boxes (30%), with random scores: overlapping, like a real detector's output."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": size, "height": size, "file_name": f"{i:06d}.jpg"} for i in range(num_images)]
    n_gt = num_images * gt_per_image
    wh = rng.uniform(8, 200, (n_gt, 2))
    xy = rng.uniform(0, 1, (n_gt, 2)) * (size - wh)
    gt_img = np.repeat(np.arange(1, num_images + 1), gt_per_image)
    gt_cat = rng.integers(1, num_classes + 1, n_gt)
    anns = [{"id": k + 1, "image_id": int(gt_img[k]), "category_id": int(gt_cat[k]),
             "bbox": [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
             "area": float(wh[k, 0] * wh[k, 1]), "iscrowd": 0} for k in range(n_gt)]
    n = num_images * dets_per_image
    det_img = np.repeat(np.arange(1, num_images + 1), dets_per_image)
    src = (det_img - 1) * gt_per_image + rng.integers(0, gt_per_image, n)
    jitter = rng.normal(0, 0.15, (n, 4)) * np.c_[wh[src], wh[src]]
    box = np.c_[xy[src], wh[src]] + jitter
    rand = rng.uniform(0, 1, n) < 0.3
    rwh = rng.uniform(8, 200, (n, 2))
    box[rand] = np.c_[rng.uniform(0, 1, (n, 2)) * (size - rwh), rwh][rand]
    box[:, 2:] = np.maximum(box[:, 2:], 1.0)
    box[:, :2] = np.maximum(box[:, :2], 0.0)
    cat = np.where(rng.uniform(0, 1, n) < 0.85, gt_cat[src], rng.integers(1, num_classes + 1, n))
    score = rng.uniform(0, 1, n)
    dets = [{"image_id": int(i), "category_id": int(c), "bbox": [round(float(v), 2) for v in b],
             "score": round(float(s), 4)} for i, c, b, s in zip(det_img, cat, box, score)]
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": k + 1, "name": f"class{k}"} for k in range(num_classes)]}
    return gt, dets


def run_pycocotools(gt: dict, dets: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def overhead_breakdown(gt: dict, dets: list[dict]) -> dict[str, float]:
    """Seconds of each step ``evaluate`` adds to pycocotools' own work (robust to machine load)."""
    from harmonic.evaluation.coco import build_coco_objects
    from harmonic.evaluation.consistency import consistency_metrics, detection_ious
    from harmonic.evaluation.inputs import load_detections, load_ground_truth

    out = {}
    t = time.perf_counter()
    g = load_ground_truth(gt)
    out["load + validate ground truth"] = time.perf_counter() - t
    t = time.perf_counter()
    d = load_detections(dets, g)
    out["parse + validate detections"] = time.perf_counter() - t
    t = time.perf_counter()
    build_coco_objects(g, d)
    out["COCO index (replaces loadRes)"] = time.perf_counter() - t
    t = time.perf_counter()
    scored = d.select(d.score >= 0.05)
    iou = detection_ious(g, scored)
    out["best IoU per detection"] = time.perf_counter() - t
    t = time.perf_counter()
    consistency_metrics(scored.score, iou)
    out["Spearman, Kendall, AIC, harmonious"] = time.perf_counter() - t
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    gt, dets = generate(args.images, args.dets)
    print(f"generated {len(gt['images'])} images, {len(gt['annotations'])} GT boxes, {len(dets)} detections "
          f"in {time.perf_counter() - t0:.1f} s")
    times: dict[str, list[float]] = {"pycocotools": [], "evaluate": []}
    ap = {}
    for rep in range(args.repeats):
        # fresh copies outside the timers: pycocotools' loadRes/_prepare mutate their inputs
        gt_c, dets_c = copy.deepcopy(gt), copy.deepcopy(dets)
        t = time.perf_counter()
        ap["pycocotools"] = run_pycocotools(gt_c, dets_c)
        times["pycocotools"].append(time.perf_counter() - t)
        t = time.perf_counter()
        report = evaluate(gt, dets)
        times["evaluate"].append(time.perf_counter() - t)
        ap["evaluate"] = report["coco"]["AP"]
        print(f"repeat {rep + 1}: pycocotools {times['pycocotools'][-1]:.2f} s, "
              f"evaluate {times['evaluate'][-1]:.2f} s")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'':<13}{'median s':>10}{'AP':>10}")
    for k in ("pycocotools", "evaluate"):
        print(f"{k:<13}{med[k]:>10.2f}{ap[k]:>10.4f}")
    ratio = med["evaluate"] / med["pycocotools"]
    print(f"ratio evaluate / pycocotools = {ratio:.3f} (target <= 1.3)")
    c = report["consistency"]
    print(f"consistency: spearman={c['spearman']:.4f} kendall={c['kendall']:.4f} aic={c['aic']:.4f} "
          f"used={c['num_used']} fp={c['num_false_positive']}")
    print("\nevaluate's own work besides COCOeval (one pass, seconds):")
    for name, seconds in overhead_breakdown(gt, dets).items():
        print(f"  {name:<34}{seconds:>7.2f}")
    if abs(ap["evaluate"] - ap["pycocotools"]) > 1e-9:
        print("AP differs from pycocotools!", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
