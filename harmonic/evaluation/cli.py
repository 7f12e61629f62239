"""``harmonic eval`` (one report) and ``harmonic compare`` (paper-style table of several)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)


def get_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("harmonic eval", description="COCO AP, AP50..AP90, score-IoU consistency "
                                "and NMS regret of COCO-format detections.")
    p.add_argument("--annotations", required=True,
                   help="ground truth: COCO json, Pascal VOC folder, YOLO labels folder (with --names), "
                        "or dataset.yaml[:split] (split defaults to val)")
    p.add_argument("--images", default=None,
                   help="images folder of a VOC / YOLO --annotations folder (default: the labels->images "
                        "sibling)")
    p.add_argument("--split", default=None, help="split of a dataset.yaml (same as DATA.yaml:SPLIT)")
    p.add_argument("--detections", required=True, help="kept detections, COCO results json")
    p.add_argument("--candidates", default=None, help="pre-NMS candidates, COCO results json: every box the graph's NMS saw, taken as given "
                        "(NMS-cluster ranking and regret)")
    p.add_argument("--names", nargs="+", default=None,
                   help="class names (map a COCO file's categories to index+1 by name)")
    p.add_argument("--score-min", type=float, default=0.05, help="score floor of the kept detections for the pooled consistency metrics and the "
                        "regret (default 0.05)")
    p.add_argument("--out", default=None, help="write the report JSON here (pairs go to a .pairs.npz beside it)")
    p.add_argument("--plot", default=None, help="write the score-IoU scatter PNG here")
    return p


def main_eval(argv: Sequence[str] | None = None) -> int:
    """``harmonic eval``: evaluate, print a table, write ``--out`` report.json and ``--plot`` PNG."""
    from harmonic.evaluation.api import evaluate, save_report
    from harmonic.evaluation.tables import format_report_table

    args = get_eval_parser().parse_args(argv)
    from harmonic.validate import check_float, check_out_file

    check_float(args.score_min, "--score-min", 0, 1)
    check_out_file(args.out)
    check_out_file(args.plot, "--plot")
    gt = (args.annotations, args.split) if args.split else args.annotations
    if Path(args.annotations).is_dir():  # VOC / YOLO: the one loader, with this command's --images
        from harmonic.data.readers import load_annotations, records_to_coco

        ann = load_annotations(args.annotations, args.names, images=args.images)
        gt = records_to_coco(ann.records, ann.names, ann.category_ids)
    report = evaluate(gt, args.detections, args.candidates, score_min=args.score_min, names=args.names,
                      return_pairs=bool(args.out or args.plot))
    print(format_report_table(report))
    if args.out:
        out = save_report(report, args.out)
        print(f"\nreport: {out}")
    if args.plot:
        from harmonic.evaluation.plots import scatter_score_iou

        png = scatter_score_iou(report, args.plot, title=Path(args.detections).name)
        print(f"plot: {png}")
    return 0


def get_compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("harmonic compare", description="Paper-style table of several evaluation "
                                "reports, with the delta last minus first.")
    p.add_argument("reports", nargs="+", help="report.json files written by harmonic eval / infer / train")
    p.add_argument("--labels", nargs="+", default=None, help="one label per report")
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--plot", default=None, help="side-by-side score-IoU PNG (reports need their pairs)")
    return p


def main_compare(argv: Sequence[str] | None = None) -> int:
    """``harmonic compare``: print and write the markdown comparison table."""
    from harmonic.evaluation.tables import compare_table

    args = get_compare_parser().parse_args(argv)
    from harmonic.validate import check_out_file

    check_out_file(args.out)
    check_out_file(args.plot, "--plot")
    if args.labels is not None and len(args.labels) != len(args.reports):
        raise HarmonicError(f"--labels gives {len(args.labels)} labels for {len(args.reports)} reports")
    table = compare_table(args.reports, args.labels)
    print(table)
    if args.out:
        from harmonic.atomic import write_text

        out = write_text(Path(args.out), table)
        print(f"table: {out}")
    if args.plot:
        from harmonic.evaluation.plots import scatter_side_by_side

        print(f"plot: {scatter_side_by_side(args.reports, args.plot, labels=args.labels)}")
    return 0
