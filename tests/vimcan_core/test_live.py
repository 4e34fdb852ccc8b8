"""StreamingPoseEstimator: one frame at a time equals the causal model over the sequence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vimcan_core.errors import CheckpointError, InputShapeError, VimcanError
from vimcan_core.live import StreamingPoseEstimator, pick_device
from vimcan_core.model import FusionMode, Vimcan, preset
from vimcan_core.model.blocks import SSMMixer
from vimcan_core.model.checkpoint import save_checkpoint

SMALL = dict(embed_dim=16, fused_dim=24, num_skeleton_layers=1, d_state=4, mlp_ratio=2.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sequence(T: int = 8):
    rng = np.random.default_rng(0)
    kp = rng.uniform(-1, 1, size=(T, 17, 3)).astype(np.float32)
    kp[..., 2] = 1.0
    kp[min(3, T - 1), 9, 2] = 0.0  # a missing joint
    q = rng.normal(size=(T, 6, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    valid = np.ones((T, 6), bool)
    valid[2:5, 1] = False  # a sensor drops out (when T > 2)
    return kp, q, valid


def _model(**kw) -> Vimcan:
    torch.manual_seed(0)
    return Vimcan(preset("vimcan-t", streaming=True, **{**SMALL, **kw})).eval()


def test_steps_equal_the_causal_model_and_reset_restarts() -> None:
    model = _model()
    kp, q, valid = _sequence()
    with torch.no_grad():
        full = model(torch.from_numpy(kp)[None], torch.from_numpy(q)[None], torch.from_numpy(valid)[None])[0].numpy()
    est = StreamingPoseEstimator(model, device="cpu")
    out = np.stack([est.step(kp[t], q[t], valid[t]) for t in range(len(kp))])
    assert out.shape == (8, 17, 3) and out.dtype == np.float32
    assert np.abs(out - full).max() < 1e-4
    est.reset()
    again = np.stack([est.step(kp[t], q[t], valid[t]) for t in range(3)])
    assert np.abs(again - full[:3]).max() < 1e-4
    # without reset the history matters: the same frame gives another pose
    assert np.abs(est.step(kp[0], q[0], valid[0]) - full[0]).max() > 1e-6


def test_from_checkpoint_and_backend_name(tmp_path) -> None:
    model = _model()
    path = save_checkpoint(tmp_path / "live.pt", model, {"note": "test"})
    est = StreamingPoseEstimator(path, device="auto")
    assert est.metadata == {"note": "test"}
    assert est.backend.startswith("cuda / " if torch.cuda.is_available() else "cpu / ")
    kp, q, valid = _sequence(2)
    assert np.isfinite(est.step(kp[0], q[0])).all()  # imu_valid defaults to all present
    assert np.isfinite(est.step(kp[1, :, :2], q[1], valid[1])).all()  # 17 x 2 keypoints
    with pytest.raises(CheckpointError, match="nothing.pt"):
        StreamingPoseEstimator(tmp_path / "nothing.pt")


def test_bad_frames_and_models_are_refused() -> None:
    est = StreamingPoseEstimator(_model(), device="cpu")
    kp, q, valid = _sequence(1)
    with pytest.raises(InputShapeError, match="17 x 3"):
        est.step(kp[0, :16], q[0], valid[0])
    with pytest.raises(InputShapeError, match="6 x 4"):
        est.step(kp[0], q[0, :5], valid[0])
    with pytest.raises(InputShapeError, match="imu_valid"):
        est.step(kp[0], q[0], valid[0, :4])
    bad = q[0].copy()
    bad[2] *= 3.0
    with pytest.raises(InputShapeError, match="left_lower_leg"):
        est.step(kp[0], bad, valid[0])
    with pytest.raises(VimcanError, match="streaming"):
        StreamingPoseEstimator(Vimcan(preset("vimcan-t", **SMALL)))


def test_vision_only_model_needs_no_imu() -> None:
    est = StreamingPoseEstimator(_model(fusion=FusionMode.VISION_ONLY), device="cpu")
    kp, _, _ = _sequence(2)
    assert est.step(kp[0]).shape == (17, 3)


def test_pick_device() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_steps_match_cpu() -> None:
    model = _model()
    kp, q, valid = _sequence()
    cpu = StreamingPoseEstimator(model, device="cpu")
    ref = np.stack([cpu.step(kp[t], q[t], valid[t]) for t in range(8)])
    gpu = StreamingPoseEstimator(_model(), device="cuda")
    out = np.stack([gpu.step(kp[t], q[t], valid[t]) for t in range(8)])
    assert gpu.backend.startswith("cuda")
    assert np.abs(out - ref).max() < 1e-3


SHIPPED = Path(__file__).resolve().parents[2] / "resources" / "models" / "vimcan-t-streaming.pt"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped streaming checkpoint is not in this checkout")
def test_shipped_model_steps_equal_its_reference_and_causal_forward(monkeypatch) -> None:
    """The shipped weights load unchanged and the inference-only step path gives the reference
    step's and the full causal forward's poses (float32, 1e-5 m)."""
    kp, q, valid = _sequence(12)
    est = StreamingPoseEstimator(SHIPPED, device="cpu")
    fast = np.stack([est.step(kp[t], q[t], valid[t]) for t in range(len(kp))])
    with torch.no_grad():
        full = est.model(torch.from_numpy(kp)[None], torch.from_numpy(q)[None], torch.from_numpy(valid)[None])[0].numpy()
    monkeypatch.setattr(SSMMixer, "fast_inference", False)
    est.reset()
    ref = np.stack([est.step(kp[t], q[t], valid[t]) for t in range(len(kp))])
    assert np.abs(fast - ref).max() < 1e-5
    assert np.abs(fast - full).max() < 1e-5
    assert np.abs(fast).max() > 1e-2  # real poses, not zeros
