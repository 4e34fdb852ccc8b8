"""Evaluation: windows cover every frame, the numbers are the metrics', and `vimcan eval` is
deterministic for a seed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.vimcan_core.tiny_model import TINY
from vimcan_core.dataset import load_clip, make_eval_clips
from vimcan_core.metrics import mpjpe_mm, p_mpjpe_mm
from vimcan_core.model import Vimcan, preset
from vimcan_core.model.checkpoint import save_checkpoint
from vimcan_core.synthesis.noise import NoisePreset
from vimcan_core.training.evaluate import _windows, evaluate, format_table, predict_clip



class PerFrame(nn.Module):
    """A stand-in 'model' without temporal mixing: joints = (x, y, conf) of the keypoints."""

    def forward(self, keypoints, quats, imu_valid=None):
        return keypoints * 1.0


@pytest.fixture(scope="module")
def clip():
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "cmu" / "subjects" / "02" / "02_02.bvh.gz"
    if not path.is_file():
        pytest.skip("real data not found")
    return load_clip(path, cache_dir=None)


def test_windows_cover_every_frame_and_are_full_length() -> None:
    for n, w in [(200, 81), (162, 81), (50, 81), (82, 81)]:
        wins = _windows(n, w)
        covered = np.zeros(n, bool)
        for a, b in wins:
            covered[a:b] = True
            assert b - a == min(n, w)
        assert covered.all() and wins[-1][1] == n


def test_windowed_prediction_equals_the_whole_clip_for_a_per_frame_model(clip) -> None:
    ec = make_eval_clips([clip], NoisePreset.CLEAN, seed=0)[0]
    whole = predict_clip(PerFrame(), ec, window=None)
    for w in (9, 27, 40):
        np.testing.assert_allclose(predict_clip(PerFrame(), ec, window=w), whole, atol=1e-6)
    result = evaluate(PerFrame(), [ec], window=27)
    assert result.frames == clip.num_frames
    assert result.p1_mm == pytest.approx(mpjpe_mm(whole, ec.sample.target), rel=1e-6)
    assert result.p2_mm == pytest.approx(p_mpjpe_mm(whole, ec.sample.target), rel=1e-6)
    assert "overall" in format_table(result)


def test_streaming_whole_clip_equals_stepping_frame_by_frame(clip) -> None:
    torch.manual_seed(0)
    model = Vimcan(preset("vimcan-t", streaming=True, **TINY)).eval()
    ec = make_eval_clips([clip], NoisePreset.REALISTIC, seed=1)[0]
    whole = predict_clip(model, ec, window=None)
    state = model.init_state(1)
    kp = torch.from_numpy(ec.sample.keypoints).float()
    q = torch.from_numpy(ec.sample.quats).float()
    with torch.no_grad():
        for t in range(10):
            out, state = model.step(kp[None, t], q[None, t], None, state)
            np.testing.assert_allclose(out[0].numpy(), whole[t], atol=2e-4)


@pytest.fixture
def bvh_dir(tmp_path: Path, shared_data: Path) -> Path:
    d = tmp_path / "bvh"
    d.mkdir()
    shutil.copy(shared_data / "cmu" / "subjects" / "02" / "02_02.bvh.gz", d)
    return d


def _checkpoint(path: Path, seed: int, **kw) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(path, Vimcan(preset("vimcan-t", **{**TINY, **kw})), {"note": "test"})


def test_vimcan_eval_is_deterministic_for_a_seed(bvh_dir: Path, tmp_path: Path, capsys) -> None:
    from app.cli import main

    ckpt = _checkpoint(tmp_path / "m.pt", 0)
    runs = {}
    for tag, seed, noise in [("a", 3, "realistic"), ("b", 3, "realistic"), ("c", 4, "realistic"), ("d", 3, "clean")]:
        out = tmp_path / f"{tag}.json"
        assert main(["eval", "--bvh", str(bvh_dir), "--checkpoint", str(ckpt), "--seed", str(seed), "--noise", noise,
                     "--json", str(out), "--window", "27", "--cache", str(tmp_path / "cache")]) == 0
        runs[tag] = json.loads(out.read_text())
    assert runs["a"]["p1_mm"] == runs["b"]["p1_mm"] and runs["a"]["clips"] == runs["b"]["clips"]
    assert runs["a"]["p1_mm"] != runs["c"]["p1_mm"] and runs["a"]["p1_mm"] != runs["d"]["p1_mm"]
    assert runs["a"]["clips"][0]["name"] == "02_02" and runs["a"]["p2_mm"] <= runs["a"]["p1_mm"]
    printed = capsys.readouterr().out
    assert "02_02" in printed and "overall" in printed and "flip-averaged" in printed
    # a bidirectional model is flip-averaged by default (as the offline re-solve runs it); --flip off is the plain model
    assert runs["a"]["flip_averaged"] is True
    out = tmp_path / "plain.json"
    assert main(["eval", "--bvh", str(bvh_dir), "--checkpoint", str(ckpt), "--seed", "3", "--noise", "realistic",
                 "--json", str(out), "--window", "27", "--cache", str(tmp_path / "cache"), "--flip", "off"]) == 0
    plain = json.loads(out.read_text())
    assert plain["flip_averaged"] is False and plain["p1_mm"] != runs["a"]["p1_mm"]


def test_vimcan_eval_compares_fusion_checkpoints(bvh_dir: Path, tmp_path: Path) -> None:
    from app.cli import main
    from vimcan_core.model import FusionMode

    a = _checkpoint(tmp_path / "ca.pt", 0)
    b = _checkpoint(tmp_path / "vo.pt", 0, fusion=FusionMode.VISION_ONLY)
    out = tmp_path / "abl.json"
    assert main(["eval", "--bvh", str(bvh_dir), "--fusion", str(a), "--fusion", str(b), "--json", str(out),
                 "--cache", str(tmp_path / "cache")]) == 0
    rep = json.loads(out.read_text())
    assert sorted(rep["ranking"]) == ["cross-attention", "vision-only"]
    p1 = [m["p1_mm"] for m in rep["models"]]
    assert rep["ranking"][0] == rep["models"][int(np.argmin(p1))]["fusion"]


def test_missing_checkpoint_says_how_to_get_one(bvh_dir: Path, tmp_path: Path, capsys) -> None:
    from app.cli import main

    assert main(["eval", "--bvh", str(bvh_dir), "--checkpoint", str(tmp_path / "none.pt"), "--cache", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "none.pt" in err and "vimcan train" in err
