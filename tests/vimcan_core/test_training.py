"""Training: the loss goes down on real motion, an interrupted run resumes to the same weights,
and `vimcan train` writes loadable checkpoints with validation numbers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.vimcan_core.tiny_model import TINY
from vimcan_core.dataset import SamplerConfig, WindowSampler, load_clip
from vimcan_core.model import Vimcan, preset
from vimcan_core.training.trainer import TrainConfig, Trainer

TINY_ARGS = [a for k, v in TINY.items() for a in ("--model-override", f"{k}={v}")]


@pytest.fixture(scope="module")
def clips():
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / "cmu" / "subjects"
    if not root.is_dir():
        pytest.skip("real data not found")
    train = [load_clip(root / "09" / f"09_{k:02d}.bvh.gz", cache_dir=None) for k in (1, 2, 3)]
    val = [load_clip(root / "02" / "02_02.bvh.gz", cache_dir=None)]
    val = [replace(val[0], joints_world_m=val[0].joints_world_m[:30], bone_quats=val[0].bone_quats[:30])]
    return train, val


def _config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        out_dir=tmp_path, batch_size=4, lr=3e-3, epochs=3, steps_per_epoch=3, sampler=SamplerConfig(lengths=(9, 18)),
        val_window=18, val_realistic=False, checkpoint_every=2, num_threads=1, seed=5,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_on_a_fixed_batch(clips) -> None:
    train, _ = clips
    torch.manual_seed(0)
    model = Vimcan(preset("vimcan-t", **TINY))
    trainer = Trainer(model, train, [], _config(Path("unused"), lr=3e-3))
    batch = WindowSampler(train, SamplerConfig(lengths=(9,))).batch(np.random.default_rng(0), 4)
    losses = [trainer.train_step(batch) for _ in range(25)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_interrupted_run_resumes_to_the_same_weights(clips, tmp_path: Path) -> None:
    train, val = clips
    torch.manual_seed(1)
    ref = Trainer(Vimcan(preset("vimcan-t", streaming=True, **TINY)), train, val, _config(tmp_path / "ref"))
    ref.fit()
    # the same run, stopped after 4 steps (mid-epoch) and resumed by a new process
    torch.manual_seed(1)
    first = Trainer(Vimcan(preset("vimcan-t", streaming=True, **TINY)), train, val, _config(tmp_path / "cut", max_steps=4))
    first.fit()
    assert first.state.step == 4
    torch.manual_seed(123)  # a different initialisation, overwritten by the resume
    second = Trainer(Vimcan(preset("vimcan-t", streaming=True, **TINY)), train, val, _config(tmp_path / "cut"))
    assert second.resume()
    second.fit()
    assert second.state.step == ref.state.step == 9
    for (name, a), b in zip(ref.module.state_dict().items(), second.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    hist = [json.loads(l) for l in (tmp_path / "cut" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert all(np.isfinite(h["val_clean_p1_mm"]) for h in hist)
    assert (tmp_path / "cut" / "best.pt").is_file()


def test_resumed_run_takes_a_new_lr_decay(clips, tmp_path: Path) -> None:
    """Resuming with another --lr-decay continues from the saved learning rate and decays it by
    the new factor from then on (the saved scheduler would otherwise keep the old factor)."""
    train, val = clips
    torch.manual_seed(1)
    first = Trainer(Vimcan(preset("vimcan-t", **TINY)), train, val, _config(tmp_path, epochs=1, lr_decay=0.9))
    first.fit()
    lr_saved = first.scheduler.get_last_lr()[0]
    assert lr_saved == pytest.approx(3e-3 * 0.9)
    second = Trainer(Vimcan(preset("vimcan-t", **TINY)), train, val, _config(tmp_path, epochs=3, lr_decay=0.5))
    assert second.resume() and second.scheduler.get_last_lr()[0] == pytest.approx(lr_saved)
    second.fit()
    assert second.scheduler.get_last_lr()[0] == pytest.approx(lr_saved * 0.5 * 0.5)


def test_vimcan_train_cli_writes_a_loadable_best_checkpoint(tmp_path: Path, shared_data: Path) -> None:
    from app.cli import main
    from vimcan_core.model.checkpoint import load_checkpoint

    data, val = tmp_path / "train", tmp_path / "val"
    data.mkdir()
    val.mkdir()
    shutil.copy(shared_data / "cmu" / "subjects" / "08" / "08_10.bvh.gz", data)
    shutil.copy(shared_data / "cmu" / "subjects" / "02" / "02_02.bvh.gz", val)
    out = tmp_path / "run"
    rc = main([
        "train", "--data", str(data), "--val-data", str(val), "--out", str(out), "--epochs", "2", "--steps-per-epoch", "2",
        "--batch-size", "2", "--lengths", "9", "--threads", "1", "--no-progress", "--no-val-realistic",
        "--cache", str(tmp_path / "cache"), *TINY_ARGS,
    ])
    assert rc == 0
    model, meta = load_checkpoint(out / "best.pt")
    assert model.config.embed_dim == 16 and meta["data"]["val_clips"] == 1
    assert meta["validation"]["clean"]["p1_mm"] > 0 and meta["train_config"]["batch_size"] == 2
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
    # --device defaults to auto: the GPU when there is one (a GPU user's plain command must not train on the CPU)
    assert meta["train_config"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def _torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(Path(__file__).with_name("ddp_worker.py")), str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.parametrize("skewed_clock", [False, True], ids=["full-run", "time-budget-on-one-rank"])
def test_data_parallel_training_under_torchrun(clips, tmp_path: Path, skewed_clock: bool) -> None:
    """Two CPU processes (gloo) under torchrun: the ranks start from different initialisations
    and end with identical weights (DDP broadcasts and averages), rank 0 writes the checkpoints;
    when one rank's time budget ends first, both stop at the same step instead of hanging."""
    res = _torchrun(tmp_path, *(["--skewed-clock"] if skewed_clock else []))
    assert res.returncode == 0, res.stderr[-3000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    assert info[0]["step"] == info[1]["step"] == (1 if skewed_clock else 6)
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name
    assert (tmp_path / "last.pt").is_file()
    if not skewed_clock:
        assert (tmp_path / "best.pt").is_file()
        assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 2
