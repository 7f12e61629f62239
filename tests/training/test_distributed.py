"""The DDP code path on CPU: gloo, 2 processes, the same train() as under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from harmonic.training.checkpoint import load_checkpoint
from harmonic.training.logging_utils import read_jsonl

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, argv: list[str], dump: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from harmonic.training.cli import get_args_parser, train

    res = train(get_args_parser().parse_args(argv))
    # parameters are what DDP keeps in sync (BatchNorm running stats are rank 0's, broadcast each forward)
    torch.save({k: v.detach().clone() for k, v in res["model"].named_parameters()},
               Path(dump) / f"rank{rank}.pt")


def _argv(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--model", "retinanet_resnet18_fpn", "--loss", "harmonic", "--epochs", "1",
            "--batch-size", "2", "--img-size", "64", "--out", str(out), "--device", "cpu", "--workers", "0",
            "--max-iters-per-epoch", "2", "--log-every", "1", "--val-every", "1", "--warmup-iters", "1"]


def test_ddp_gloo_two_processes_identical_weights(synth_yaml, tmp_path):
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, _free_port(), _argv(synth_yaml, out), str(tmp_path)), nprocs=2, join=True)
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert set(w0) == set(w1)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 0
    # rank 0 wrote the checkpoint with the weights both ranks hold (the step changed them)
    for k in w0:
        assert torch.equal(ckpt["model"][k], w0[k]), k
    recs = read_jsonl(out / "log.jsonl")
    assert recs[0]["type"] == "start" and recs[0]["world_size"] == 2
    # 8 images / (2 ranks x batch 2) = 2 iterations per rank, logged once (rank 0 only)
    assert [r["iter"] for r in recs if r["type"] == "train"] == [1, 2]
    assert "AP" in ckpt["metrics"]["val"]["coco"]


@pytest.mark.slow
def test_same_command_under_torchrun(synth_yaml, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(_free_port()), str(REPO / "train" / "run.py"), *_argv(synth_yaml, out)]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(out / "last.pt")["epoch"] == 0
    assert read_jsonl(out / "log.jsonl")[0]["world_size"] == 2
