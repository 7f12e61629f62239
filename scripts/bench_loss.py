"""Per-step cost of the HarmonicDet loss: the same detector trained with ``--loss harmonic`` vs ``baseline``.

One training step = forward + backward + optimizer step on the same fixed batch (same seed, same
initial weights). Warm-up steps are excluded and the two variants are interleaved (ABAB/BABA) so
drifts in machine load hit both equally. Prints median step times and the ratio harmonic/baseline.

    python scripts/bench_loss.py --device cpu --img-size 256 --batch-size 2 --iters 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmonic.atomic import write_text  # noqa: E402

DEFAULT_MODELS = ["retinanet_resnet18_fpn", "fasterrcnn_resnet18_fpn", "fcos_resnet18_fpn",
                  "ssdlite320_mobilenet_v3_large"]


def make_batch(batch_size: int, img_size: int, num_classes: int, seed: int, device: torch.device):
    """Random images ``[B,3,S,S]`` in [0,1] and 2-6 random boxes per image (labels index+1)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, img_size, img_size, generator=g)
    targets = []
    for _ in range(batch_size):
        n = int(torch.randint(2, 7, (1,), generator=g))
        wh = torch.rand(n, 2, generator=g) * img_size * 0.4 + img_size * 0.08
        xy = torch.rand(n, 2, generator=g) * (img_size - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, num_classes + 1, (n,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images.to(device), targets


def build_pair(name: str, num_classes: int, img_size: int, seed: int, device: torch.device):
    """The detector with each loss, with identical initial weights."""
    from harmonic.models import build_detector

    models = {}
    for loss in ("baseline", "harmonic"):
        torch.manual_seed(seed)
        models[loss] = build_detector(name, num_classes, loss=loss, img_size=img_size).to(device).train()
    try:
        models["harmonic"].load_state_dict(models["baseline"].state_dict())
    except RuntimeError:
        pass  # the adapters may hold extra buffers; same seed already gives the same init
    return models


def step(model, optimizer, images, targets, device: torch.device, amp: bool) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        loss_dict = model(list(images), targets)
    loss = sum(v.float() for k, v in loss_dict.items() if k.startswith("loss_"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    from harmonic.models import MODELS

    img_size = args.img_size or MODELS[name].default_img_size
    models = build_pair(name, args.num_classes, img_size, args.seed, device)
    opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=args.lr, momentum=0.9)
            for k, m in models.items()}
    images, targets = make_batch(args.batch_size, img_size, args.num_classes, args.seed, device)
    amp = args.amp and device.type == "cuda"
    times: dict[str, list[float]] = {"baseline": [], "harmonic": []}
    for i in range(args.warmup + args.iters):
        order = ("baseline", "harmonic") if i % 2 == 0 else ("harmonic", "baseline")
        for loss in order:
            dt = step(models[loss], opts[loss], images, targets, device, amp)
            if i >= args.warmup:
                times[loss].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "img_size": img_size, "batch_size": args.batch_size, "iters": args.iters,
            "baseline_ms": med["baseline"] * 1e3, "harmonic_ms": med["harmonic"] * 1e3,
            "ratio": med["harmonic"] / med["baseline"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--img-size", type=int, default=None, help="default: each model's default size")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--iters", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, batch {args.batch_size}, {args.iters} timed steps after {args.warmup} warm-up")
    print(f"{'model':<32} {'size':>4} {'baseline ms':>12} {'harmonic ms':>12} {'ratio':>7}")
    for name in args.models:
        r = bench_model(name, args, device)
        rows.append(r)
        print(f"{name:<32} {r['img_size']:>4} {r['baseline_ms']:>12.1f} {r['harmonic_ms']:>12.1f} "
              f"{r['ratio']:>7.3f}", flush=True)
    if args.json:
        write_text(args.json, json.dumps({"device": str(device), "torch": torch.__version__, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
