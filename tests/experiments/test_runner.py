"""The experiment front ends refuse bad input with one line before any training starts."""

from __future__ import annotations

import pytest
import yaml

from harmonic.cli import main
from harmonic.experiments.ablate import VARIANTS, parse_variants
from harmonic.experiments.runner import HARMONIC, Variant, check_output_dir


def _yaml_without_val(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "ann.json").write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}')
    p = tmp_path / "data.yaml"
    p.write_text(yaml.safe_dump({"names": ["a"], "train": {"images": "images", "annotations": "ann.json"}}))
    return p


@pytest.mark.parametrize("command", ["demo", "ablate"])
@pytest.mark.parametrize("case", ["seeds0", "epochs0", "out_is_file", "no_val", "bad_model", "resamples0"])
def test_bad_input_is_one_line_before_training(command, case, tmp_path, capsys):
    out = tmp_path / "out"
    args = [command, "--out", str(out)]
    if case == "seeds0":
        args += ["--seeds", "0"]
    elif case == "epochs0":
        args += ["--epochs", "0"]
    elif case == "out_is_file":
        out.write_text("x")
    elif case == "no_val":
        args += ["--data", str(_yaml_without_val(tmp_path))]
    elif case == "bad_model":
        args += ["--model", "nope"]
    elif case == "resamples0":
        args += ["--resamples", "0"]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not (out / "data").exists()  # nothing generated, nothing trained


def test_unwritable_out(tmp_path):
    from harmonic.errors import HarmonicError

    blocker = tmp_path / "file"
    blocker.write_text("x")  # a folder under a regular file can't be created, even by root
    with pytest.raises(HarmonicError, match="not writable"):
        check_output_dir(blocker / "sub")
    assert check_output_dir(tmp_path / "new" / "dir").is_dir()


def test_ablate_variants():
    assert [v.name for v in parse_variants(None)] == list(VARIANTS)
    assert [v.name for v in parse_variants("full, baseline")] == ["full", "baseline"]
    from harmonic.errors import HarmonicError

    with pytest.raises(HarmonicError, match="unknown variant"):
        parse_variants("baseline,nope")
    with pytest.raises(HarmonicError, match="twice"):
        parse_variants("hl,hl")
    from harmonic.experiments.ablate import parse_seed_counts

    assert [v.name for v in parse_variants("baseline:3,full:3,hl")] == ["baseline", "full", "hl"]
    assert parse_seed_counts("baseline:3, full:3,hl", 1) == {"baseline": 3, "full": 3, "hl": 1}
    assert parse_seed_counts(None, 2) == dict.fromkeys(VARIANTS, 2)
    for bad in ("full:0", "full:x", "full:-1"):
        with pytest.raises(HarmonicError, match="seed count"):
            parse_seed_counts(bad, 1)
    # the paper's parts, switched by loss options
    hl = dict(VARIANTS["hl"].loss_options)
    assert hl == {"harmonic_factors": True, "alpha": 0.0, "tc_weight": 0.0}
    assert dict(VARIANTS["full_detached"].loss_options) == {"detach_factors": True}


def test_variant_option_args():
    v = Variant("x", "X", "harmonic", (("detach_factors", True), ("alpha", 0.0)))
    assert v.option_args() == ["--loss-option", "detach_factors=true", "--loss-option", "alpha=0.0"]
    assert HARMONIC.option_args() == []


def test_unknown_variant_exit_2(capsys, tmp_path):
    rc = main(["ablate", "--variants", "baseline,bogus", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bogus" in err[0]


def test_candidates_are_what_the_graphs_nms_sees(tmp_path):
    """Every (box, class) pair scoring at least the raw graph's own score threshold, whatever the scale."""
    import json

    from harmonic.data.images import decode_image
    from harmonic.data.letterbox import letterbox
    from harmonic.experiments.runner import write_candidates
    from tests.runtime.runtime_graphs import BOXES, NAMES, W, make_graph, write_images

    raw = make_graph(tmp_path / "model.raw.onnx", raw=True, score_threshold=0.02)
    paths = write_images(tmp_path / "images", 3, seed=4)
    gt = {"images": [{"id": i + 1, "file_name": p.name, "width": 10, "height": 10} for i, p in enumerate(paths)],
          "annotations": [], "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    n = write_candidates(raw, tmp_path / "images", tmp_path / "gt.json", tmp_path / "cands.json")
    cands = json.loads((tmp_path / "cands.json").read_text())
    scores = []
    for p in paths:  # the graph's scores: the letterboxed image's channel means times W
        lb, _ = letterbox(decode_image(p), 64)
        s = (lb.reshape(-1, 3).mean(0) / 255.0)[:, None] * W  # [C, A]
        scores += s[s >= 0.02].tolist()
    assert n == len(cands) == len(scores) and BOXES.shape[0] == W.shape[1]
    assert sorted(c["score"] for c in cands) == pytest.approx(sorted(scores), rel=1e-4)  # float32 means
    low = sum(1 for s in scores if s < 0.05)
    assert low > 0 and sum(1 for c in cands if c["score"] < 0.05) == low  # no floor of 0.05 any more
