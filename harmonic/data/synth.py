"""``harmonic synth``: a deterministic synthetic detection dataset of the cases the paper is about.

Each image has a textured, noisy gradient background with clutter (lines,
curves, outlines, specks that are not objects) and 1-8 objects of irregular
shape (stars, blobs, thin rotated bars, crescents, ...) at scales from about
4% to 50% of the image, placed so that they often occlude each other. An
object whose box would be hidden by more than 70% is never created, so every
drawn object is annotated, and its box is the full (not only the visible)
object's extent. Shapes are rendered as polygon masks, so the ground-truth box
is exactly the drawn pixels' extent. numpy + OpenCV only.

Output (the dataset file of docs/data.md)::

    OUT/images/{train,val,test}/000001.jpg
    OUT/annotations/{train,val,test}.json   # COCO, category_id = index + 1
    OUT/dataset.yaml

Image ``i`` of a split depends only on ``(seed, split, i)``, so the output is
byte-identical between runs and independent of the number of worker processes,
and adding a test split leaves train and val as they were. The test split
(rendered from its own stream, after train and val) is what comparisons report
on; val selects the checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import yaml

from harmonic.atomic import atomic_path, write_text
from harmonic.data.readers import ImageRecord, write_coco
from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

Polys = tuple[list[np.ndarray], list[np.ndarray]]  # (filled polygons, holes), unit scale, centred at 0
TAU = 2 * np.pi
MIN_VISIBLE = 0.3  # an earlier object must keep >= 30% of its pixels visible
SPLITS = ("train", "val", "test")  # split_id = position: the random stream of each split


# ---------------------------------------------------------------- shapes (unit radius ~1)

def _ring(n: int, r: np.ndarray | float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = np.linspace(0, TAU, n, endpoint=False) + phase
    return np.stack([np.cos(t), np.sin(t)], 1) * np.asarray(r, dtype=np.float64).reshape(-1, 1)


def _circle(rng: np.random.Generator, size: float) -> Polys:
    return [_ring(64)], []


def _triangle(rng: np.random.Generator, size: float) -> Polys:
    while True:  # random triangles, thin ones included, but no sliver below ~17 degrees
        a = np.sort(rng.uniform(0, TAU, 3))
        if np.diff(np.r_[a, a[0] + TAU]).min() > 0.6:
            return [np.stack([np.cos(a), np.sin(a)], 1)], []


def _star(rng: np.random.Generator, size: float) -> Polys:
    n = int(rng.integers(4, 9))
    inner = rng.uniform(0.3, 0.6)
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner) * rng.uniform(0.85, 1.0, 2 * n)
    return [_ring(2 * n, r)], []


def _blob(rng: np.random.Generator, size: float) -> Polys:
    t = np.linspace(0, TAU, 72, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 6):
        r += rng.uniform(0, 0.35 / (k - 1)) * np.sin(k * t + rng.uniform(0, TAU))
    r = np.clip(r, 0.25, None)
    return [_ring(72, r / r.max())], []


def _bar(rng: np.random.Generator, size: float) -> Polys:
    t = max(rng.uniform(0.08, 0.25), 3.0 / size)  # half-thickness; at least ~3 px thick
    return [np.array([[-1, -t], [1, -t], [1, t], [-1, t]], dtype=np.float64)], []


def _crescent(rng: np.random.Generator, size: float) -> Polys:
    ang, off = rng.uniform(0, TAU), rng.uniform(0.35, 0.6)
    hole = _ring(64, rng.uniform(0.75, 0.95)) + off * np.array([np.cos(ang), np.sin(ang)])
    return [_ring(64)], [hole]


def _cross(rng: np.random.Generator, size: float) -> Polys:
    w = max(rng.uniform(0.15, 0.35), 2.0 / size)
    q = np.array([[w, w], [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w], [-w, -1], [w, -1],
                  [w, -w], [1, -w], [1, w]], dtype=np.float64)
    return [q], []


def _chevron(rng: np.random.Generator, size: float) -> Polys:
    t = max(rng.uniform(0.15, 0.3), 3.0 / size)
    q = np.array([[-1, -0.5], [0, 0.5], [1, -0.5], [1 - 2 * t, -0.5], [0, 0.5 - 2.8 * t],
                  [-1 + 2 * t, -0.5]], dtype=np.float64)
    return [q], []


# class name -> (polygon maker, max aspect jitter)
SHAPES: dict[str, tuple[Callable[[np.random.Generator, float], Polys], float]] = {
    "circle": (_circle, 1.15),
    "triangle": (_triangle, 1.6),
    "star": (_star, 1.4),
    "blob": (_blob, 1.8),
    "bar": (_bar, 1.5),
    "crescent": (_crescent, 1.4),
    "cross": (_cross, 1.5),
    "chevron": (_chevron, 1.6),
}
MAX_CLASSES = len(SHAPES)


def class_names(num_classes: int) -> list[str]:
    """The first ``num_classes`` shape names (``circle, triangle, star, blob, bar, crescent, cross, chevron``)."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise HarmonicError(f"synth: --classes must be 1..{MAX_CLASSES}, got {num_classes}")
    return list(SHAPES)[:num_classes]


# ---------------------------------------------------------------- rendering

def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient + low-frequency colour noise + a texture (stripes or grain); float32[H, W, 3]."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = rng.uniform(0, TAU)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(ang) + yy * np.sin(ang)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    bg = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    k = int(rng.integers(3, 9))
    low = rng.normal(0, 1, (k, k, 3)).astype(np.float32)
    bg += cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(8, 35)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        f, b = rng.uniform(0.05, 0.4), rng.uniform(0, TAU)
        bg += (np.sin(f * (xx * np.cos(b) + yy * np.sin(b))) * rng.uniform(5, 25))[..., None]
    elif kind == 1:  # grain
        grain = rng.normal(0, 1, (h, w)).astype(np.float32)
        grain = cv2.GaussianBlur(grain, (0, 0), rng.uniform(0.8, 2.5))
        bg += (grain * rng.uniform(15, 50))[..., None]
    return bg


def _random_color(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(v) for v in rng.uniform(0, 255, 3))


def _clutter(rng: np.random.Generator, img: np.ndarray, n: int) -> None:
    """Non-object marks: thin lines, open curves, rectangle outlines, specks (drawn in place)."""
    h, w = img.shape[:2]
    for _ in range(n):
        kind = rng.integers(4)
        color = _random_color(rng)
        if kind == 0:
            p = rng.uniform(0, 1, 4) * [w, h, w, h]
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), color, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:
            pts = (rng.uniform(0, 1, (int(rng.integers(3, 6)), 2)) * [w, h]).astype(np.int32)
            cv2.polylines(img, [pts], False, color, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 2:
            x, y = rng.uniform(0, 1) * w, rng.uniform(0, 1) * h
            bw, bh = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
            cv2.rectangle(img, (int(x), int(y)), (int(x + bw), int(y + bh)), color, 1, cv2.LINE_AA)
        else:
            for _ in range(int(rng.integers(3, 15))):
                cv2.circle(img, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.integers(1, 3)),
                           color, -1, cv2.LINE_AA)


def _place(rng: np.random.Generator, polys: Polys, size: float, aspect: float, w: int, h: int,
           near: np.ndarray | None) -> Polys:
    """Scale (``size`` px long side, aspect jitter), rotate, and translate fully inside ``w x h``."""
    a = np.exp(rng.uniform(-np.log(aspect), np.log(aspect)))
    scale = np.array([np.sqrt(a), 1 / np.sqrt(a)]) * size / 2
    th = rng.uniform(0, TAU)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    pos = [(p * scale) @ rot.T for p in polys[0]]
    neg = [(p * scale) @ rot.T for p in polys[1]]
    allp = np.concatenate(pos)
    lo, hi = allp.min(0), allp.max(0)
    span = hi - lo
    fit = min(1.0, (w - 2) / span[0], (h - 2) / span[1])  # shrink if it cannot fit
    if fit < 1.0:
        pos, neg, lo, hi = [p * fit for p in pos], [p * fit for p in neg], lo * fit, hi * fit
    cmin, cmax = -lo + 1, np.array([w, h]) - hi - 1
    if near is not None:  # centre near an existing object's box to provoke occlusion
        x1, y1, x2, y2 = near
        c = np.array([rng.uniform(x1, x2), rng.uniform(y1, y2)])
    else:
        c = rng.uniform(0, 1, 2) * [w, h]
    c = np.clip(c, cmin, np.maximum(cmin, cmax))
    return [p + c for p in pos], [p + c for p in neg]


def _mask(polys: Polys, h: int, w: int) -> np.ndarray:
    """uint8[H, W] mask (0/1) of the filled polygons minus the holes, with 1/16 px vertex precision."""
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(p * 16).astype(np.int32) for p in polys[0]], 1, cv2.LINE_8, shift=4)
    if polys[1]:
        cv2.fillPoly(m, [np.round(p * 16).astype(np.int32) for p in polys[1]], 0, cv2.LINE_8, shift=4)
    return m


def _object_fill(rng: np.random.Generator, bg_mean: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """float32[h, w, 3] object texture: a colour kept away from the local background, with shading."""
    x, y, bw, bh = box
    for _ in range(8):
        color = rng.uniform(0, 255, 3)
        if np.abs(color - bg_mean).sum() > 90:
            break
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    ang = rng.uniform(0, TAU)
    shade = (xx * np.cos(ang) + yy * np.sin(ang)) / max(bw, bh, 1) * rng.uniform(-40, 40)
    return color.astype(np.float32) + shade[..., None]


# P(n objects) for n = 1..8; a smaller --max-objects truncates and renormalises it
OBJECT_COUNT_P = (0.1, 0.15, 0.2, 0.2, 0.15, 0.1, 0.05, 0.05)
DEFAULT_SCALE = (0.04, 0.5)


def render_image(seed: int, split_id: int, index: int, img_size: int, num_classes: int,
                 scale: tuple[float, float] = DEFAULT_SCALE,
                 max_objects: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic image: ``(image uint8[H, W, 3] BGR, boxes float32[N, 4] xyxy, labels int64[N] 0-based)``.

    Deterministic in ``(seed, split_id, index)`` and the settings.
    """
    img, boxes, labels, _ = render_scene(seed, split_id, index, img_size, num_classes, scale, max_objects)
    return img, boxes, labels


def render_scene(seed: int, split_id: int, index: int, img_size: int, num_classes: int,
                 scale: tuple[float, float] = DEFAULT_SCALE,
                 max_objects: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """:func:`render_image` plus each object's full mask ``uint8[H, W]`` (0/1), in drawing (z) order.

    ``scale`` = (smallest, largest) object size as a fraction of ``img_size`` (log-uniform between;
    never below 10 px); ``max_objects`` in 1..8 caps the number of objects per image.
    """
    rng = np.random.default_rng([seed, split_id, index])
    h = w = img_size
    if rng.uniform() < 0.3:  # some non-square images, so letterboxing is exercised
        side = max(32, int(round(img_size * rng.uniform(0.6, 0.95))))
        if rng.uniform() < 0.5:
            w = side
        else:
            h = side
    img = _background(rng, h, w)
    _clutter(rng, img, int(rng.integers(0, 7)))

    names = list(SHAPES)[:num_classes]
    count_p = np.asarray(OBJECT_COUNT_P[:max_objects])
    n_obj = int(rng.choice(np.arange(1, max_objects + 1), p=count_p / count_p.sum()))
    ids = np.zeros((h, w), np.int16)  # topmost object id per pixel (0 = background)
    areas: list[int] = []
    objects: list[tuple[int, np.ndarray, tuple[int, int, int, int], int]] = []  # (label, mask, rect, z)
    lo_size = max(10.0, scale[0] * img_size)
    hi_size = max(lo_size, scale[1] * img_size)
    for _ in range(n_obj):
        for _attempt in range(12):
            label = int(rng.integers(num_classes))
            maker, aspect = SHAPES[names[label]]
            size = float(np.exp(rng.uniform(np.log(lo_size), np.log(hi_size))))
            near = None
            if objects and rng.uniform() < 0.4:
                x, y, bw, bh = objects[int(rng.integers(len(objects)))][2]
                near = np.array([x, y, x + bw, y + bh], dtype=np.float64)
            polys = _place(rng, maker(rng, size), size, aspect, w, h, near)
            m = _mask(polys, h, w)
            area = int(m.sum())
            if area < 20:
                continue
            new_ids = np.where(m > 0, np.int16(len(objects) + 1), ids)
            visible = np.bincount(new_ids.ravel(), minlength=len(objects) + 2)[1:len(objects) + 1]
            if objects and (visible / np.asarray(areas)).min() < MIN_VISIBLE:
                continue  # would hide an earlier object too much: try another placement
            rect = cv2.boundingRect(m)
            ids = new_ids
            areas.append(area)
            x, y, bw, bh = rect
            fill = _object_fill(rng, img[y:y + bh, x:x + bw].reshape(-1, 3).mean(0), rect)
            roi = img[y:y + bh, x:x + bw]
            sel = m[y:y + bh, x:x + bw] > 0
            roi[sel] = fill[sel]
            objects.append((label, m, rect, len(objects) + 1))
            break

    if rng.uniform() < 0.3:  # a few thin marks over the objects too
        _clutter(rng, img, int(rng.integers(1, 3)))
    img += rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    if rng.uniform() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    out = np.clip(img, 0, 255).astype(np.uint8)
    boxes = np.array([[x, y, x + bw, y + bh] for _, _, (x, y, bw, bh), _ in objects], np.float32).reshape(-1, 4)
    labels = np.array([lab for lab, *_ in objects], np.int64)
    return out, boxes, labels, [m for _, m, _, _ in objects]


def _render_to_file(job: tuple) -> ImageRecord:
    seed, split_id, index, img_size, num_classes, scale, max_objects, path = job
    img, boxes, labels = render_image(seed, split_id, index, img_size, num_classes, scale, max_objects)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise HarmonicError(f"{path}: cannot encode image")
    with atomic_path(path) as tmp:  # a full disk leaves no truncated image behind
        tmp.write_bytes(buf.tobytes())
    return ImageRecord(index + 1, Path(path).name, img.shape[1], img.shape[0], boxes, labels,
                       np.zeros(len(labels), bool))


def _run_jobs(jobs: list[tuple], workers: int) -> list[ImageRecord]:
    if workers <= 1 or len(jobs) < 64:
        return [_render_to_file(j) for j in jobs]
    import multiprocessing as mp

    # spawn: safe when the caller has torch (and its thread pools) loaded
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        return list(ex.map(_render_to_file, jobs, chunksize=max(1, len(jobs) // (workers * 8))))


def generate(out_dir: str | Path, num_train: int, num_val: int, seed: int = 0, img_size: int = 256,
             num_classes: int = 3, workers: int | None = None, scale: tuple[float, float] = DEFAULT_SCALE,
             max_objects: int = 8, num_test: int = 0) -> Path:
    """Write the synthetic dataset under ``out_dir`` and return the path of its ``dataset.yaml``.

    ``num_test`` > 0 adds a ``test`` split (its own random stream: train and val are unchanged).

    ``workers`` processes render the images (default: CPU count, one process for
    small sets); the output does not depend on it. ``scale`` and ``max_objects``: see
    :func:`render_scene`.
    """
    names = class_names(num_classes)
    scale = (float(scale[0]), float(scale[1]))
    if not 0 < scale[0] <= scale[1] <= 1:
        raise HarmonicError(f"synth: --scale must satisfy 0 < MIN <= MAX <= 1, got {scale[0]} {scale[1]}")
    if not 1 <= max_objects <= len(OBJECT_COUNT_P):
        raise HarmonicError(f"synth: --max-objects must be 1..{len(OBJECT_COUNT_P)}, got {max_objects}")
    if num_train < 0 or num_val < 0 or num_test < 0:
        raise HarmonicError("synth: --num-train, --num-val and --num-test must be >= 0")
    if img_size < 32:
        raise HarmonicError(f"synth: --img-size must be >= 32, got {img_size}")
    out = Path(out_dir)
    workers = (os.cpu_count() or 1) if workers is None else workers
    t0 = time.perf_counter()
    yaml_path = out / "dataset.yaml"
    # dataset.yaml marks a complete dataset: drop an earlier one first and write the new one last
    # (atomically), so an interrupted run never leaves new images beside an old, complete-looking yaml
    yaml_path.unlink(missing_ok=True)
    splits = {}
    for split_id, (split, n) in enumerate(zip(SPLITS, (num_train, num_val, num_test))):
        if split == "test" and n == 0:
            continue
        img_dir = out / "images" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        for stale in img_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].jpg"):  # an earlier, larger run
            if int(stale.stem) > n:
                stale.unlink()
        jobs = [(seed, split_id, i, img_size, num_classes, scale, max_objects, str(img_dir / f"{i + 1:06d}.jpg"))
                for i in range(n)]
        records = _run_jobs(jobs, workers)
        write_coco(records, names, out / "annotations" / f"{split}.json")
        splits[split] = {"images": f"images/{split}", "annotations": f"annotations/{split}.json"}
        log.info("synth: %s: %d images, %d objects", split, n, sum(len(r.labels) for r in records))
    config = {"names": names, **splits}
    header = (f"# harmonic synth --seed {seed} --img-size {img_size} --classes {num_classes} "
              f"--scale {scale[0]:g} {scale[1]:g} --max-objects {max_objects}\n")
    write_text(yaml_path, header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
    log.info("synth: wrote %s in %.1f s", yaml_path, time.perf_counter() - t0)
    return yaml_path


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmonic synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--num-test", type=int, default=200, help="held-out test images (0: no test split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-size", type=int, default=256, help="longer image side in pixels")
    p.add_argument("--classes", type=int, default=3, help=f"number of shape classes (1..{MAX_CLASSES})")
    p.add_argument("--scale", type=float, nargs=2, default=DEFAULT_SCALE, metavar=("MIN", "MAX"),
                   help="object size range as a fraction of the image side (default 0.04 0.5)")
    p.add_argument("--max-objects", type=int, default=8, help="at most this many objects per image (1..8)")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: CPU count)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``harmonic synth --out DIR --num-train N --num-val M --num-test T --seed S [--img-size 256] [--classes 3]``."""
    args = get_args_parser().parse_args(argv)
    from harmonic.validate import check_int, check_out_dir

    check_out_dir(args.out)
    check_int(args.workers, "--workers", 1)
    t0 = time.perf_counter()
    path = generate(args.out, args.num_train, args.num_val, seed=args.seed, img_size=args.img_size,
                    num_classes=args.classes, workers=args.workers, scale=tuple(args.scale),
                    max_objects=args.max_objects, num_test=args.num_test)
    print(f"wrote {path} ({args.num_train} train + {args.num_val} val + {args.num_test} test images, "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0
