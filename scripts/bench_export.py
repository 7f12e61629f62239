"""Benchmark the exported graph on this machine's CPU (not a timed test).

For RetinaNet-ResNet18-FPN and SSDlite-MobileNetV3 at 320 px, batch 1 and 8, side by side:

- PyTorch eager (torchvision's own forward + post-processing) vs ONNX Runtime running the
  end-to-end graph (NMS inside): images/s and the ratio;
- the NMS tail: end-to-end graph vs the ``--raw`` graph followed by host-side NMS in numpy
  (``harmonic.boxes.batched_nms`` + top-K per image).

Random-init weights (nothing is downloaded) with the last classification layer re-drawn
so scores spread around the threshold; 80 classes. Reports medians.

    python scripts/bench_export.py [--reps 5] [--conf 0.01] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(name: str, num_classes: int, size: int):  # noqa: ANN201
    import torch
    from torchvision.models.detection import retinanet, ssdlite
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    if name == "retinanet_resnet18_fpn":
        bb = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                 returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
        model = retinanet.RetinaNet(bb, num_classes=num_classes + 1, min_size=size, max_size=size)
        last = model.head.classification_head.cls_logits
    else:
        model = ssdlite.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                      num_classes=num_classes + 1)
        last = model.head.classification_head.module_list[-1][-1]
    with torch.no_grad():
        last.weight.normal_(0, 0.05)
    return model.eval()


def median_time(fn, reps: int, warmup: int = 1) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def host_nms(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float, k: int,
             max_candidates: int = 5000) -> list[np.ndarray]:
    """Raw outputs ``boxes [B,A,4]``, ``scores [B,A,C]`` -> per image kept detections ``[n,6]``.

    At most ``max_candidates`` (anchor, class) pairs per image go into NMS (best scores).
    """
    from harmonic.boxes import batched_nms

    out = []
    for b in range(boxes.shape[0]):
        a, c = np.nonzero(scores[b] > conf)
        s = scores[b][a, c]
        if len(s) > max_candidates:  # a pre-NMS cap like torchvision's (the graph caps per level/class)
            top = np.argpartition(-s, max_candidates)[:max_candidates]
            a, c, s = a[top], c[top], s[top]
        keep = batched_nms(boxes[b][a], s, c, iou)[:k]
        out.append(np.concatenate([boxes[b][a][keep], s[keep, None], c[keep, None]], axis=1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--conf", type=float, default=0.01)
    p.add_argument("--iou", type=float, default=0.6)
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--models", nargs="+", default=["retinanet_resnet18_fpn", "ssdlite320_mobilenet_v3_large"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    args = p.parse_args(argv)

    import onnxruntime as ort
    import torch

    from harmonic.export.onnx_export import export_model
    from harmonic.export.verify import reference_detector, synthetic_images

    torch.set_num_threads(args.threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    for name in args.models:
        model = build(name, 80, args.size)
        opts = dict(img_size=args.size, conf=args.conf, iou=args.iou, max_det=args.max_det)
        e2e = export_model(model, tmp / f"{name}.onnx", **opts)
        raw = export_model(model, tmp / f"{name}.raw.onnx", raw=True, **opts)
        s_e2e = ort.InferenceSession(str(e2e), so, providers=["CPUExecutionProvider"])
        s_raw = ort.InferenceSession(str(raw), so, providers=["CPUExecutionProvider"])
        ref = reference_detector(model, args.size, args.conf, args.iou, args.max_det)
        for b in args.batches:
            x = synthetic_images(b, args.size, seed=b)
            xt = list(torch.from_numpy(x))
            reps = max(3, args.reps // max(1, b // 4))

            def run_torch(ref=ref, xt=xt):
                with torch.inference_mode():
                    return ref(xt)

            def run_raw_nms(s_raw=s_raw, x=x):
                bx, sc = s_raw.run(None, {"images": x})
                return host_nms(bx, sc, args.conf, args.iou, args.max_det)

            t_torch = median_time(run_torch, reps)
            t_e2e = median_time(lambda s_e2e=s_e2e, x=x: s_e2e.run(None, {"images": x}), reps)
            t_raw = median_time(run_raw_nms, reps)
            ndet = int(s_e2e.run(None, {"images": x})[0].sum())
            rows.append((name, b, b / t_torch, b / t_e2e, t_torch / t_e2e, b / t_raw, t_raw / t_e2e, ndet))
            print(f"  {name} b={b}: torch {t_torch * 1e3:.1f} ms, ort e2e {t_e2e * 1e3:.1f} ms, "
                  f"ort raw+numpy nms {t_raw * 1e3:.1f} ms", flush=True)

    hdr = (f"{'model':<30} {'B':>2} {'torch img/s':>11} {'ORT img/s':>10} {'ORT/torch':>9} "
           f"{'raw+np img/s':>12} {'e2e/raw':>7} {'dets':>5}")
    print(f"\nCPU, {args.threads} threads, {args.size}px, conf {args.conf}, iou {args.iou}, K {args.max_det}, "
          f"medians of >= 3 runs\n{hdr}\n{'-' * len(hdr)}")
    for name, b, tt, te, ratio, tr, nms_ratio, ndet in rows:
        print(f"{name:<30} {b:>2} {tt:>11.2f} {te:>10.2f} {ratio:>8.2f}x {tr:>12.2f} {nms_ratio:>6.2f}x {ndet:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
