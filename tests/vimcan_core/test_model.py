"""The VIMCAN network: sizes, input handling, streaming = causal, ablations, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from vimcan_core.errors import CheckpointError, InputShapeError, VimcanError
from vimcan_core.losses import vimcan_loss
from vimcan_core.model import FusionMode, Vimcan, VimcanConfig, preset
from vimcan_core.model import scan_cpu
from vimcan_core.model.blocks import SSMMixer
from vimcan_core.model.checkpoint import load_checkpoint, save_checkpoint
from vimcan_core.skeleton import Joint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: a small model with every component of the real one (fast to build and run)
SMALL = dict(embed_dim=16, fused_dim=24, num_skeleton_layers=2, d_state=4, mlp_ratio=2.0)


def _inputs(B: int = 2, T: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(B, T, 17, 3, generator=g) * 2 - 1
    kp[..., 2] = torch.rand(B, T, 17, generator=g) * 0.5 + 0.5
    q = torch.randn(B, T, 6, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    valid = torch.ones(B, T, 6, dtype=torch.bool)
    return kp, q, valid


def _model(**kw) -> Vimcan:
    torch.manual_seed(0)
    return Vimcan(preset("vimcan-t", **{**SMALL, **kw})).eval()


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, paper_millions", [("vimcan-t", 3.9), ("vimcan-b", 12.3)])
def test_preset_sizes_match_the_paper(name: str, paper_millions: float) -> None:
    n = _count(Vimcan(preset(name)))
    assert abs(n / 1e6 - paper_millions) / paper_millions < 0.10, n


def test_parameter_breakdown_sums_to_the_total() -> None:
    model = _model()
    parts = model.parameter_breakdown()
    assert sum(parts.values()) == _count(model)
    assert all(v > 0 for v in parts.values())
    assert _model(fusion=FusionMode.VISION_ONLY).parameter_breakdown()["inertial embedding"] == 0


def test_model_info_command_prints_the_total(capsys) -> None:
    from app.cli import main

    assert main(["model-info", "vimcan-t", "--fused-dim", "24", "--streaming"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cfg = preset("vimcan-t", fused_dim=24, streaming=True)
    assert lines[-1] == f"total parameters: {_count(Vimcan(cfg))}"
    assert any(line.startswith("part-aware STMamba") for line in lines)


def test_mamba_initialisation() -> None:
    model = _model()
    mixer = model.part_layer.temporal.mixer
    n = model.config.d_state
    assert torch.allclose(-torch.exp(mixer.A_log), -torch.arange(1, n + 1.0).expand_as(mixer.A_log))
    assert torch.all(mixer.D == 1.0)
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6


@pytest.mark.parametrize("T", [1, 2, 9])
def test_output_shape_root_relative_and_finite(T: int) -> None:
    kp, q, valid = _inputs(T=T)
    out = _model()(kp, q, valid)
    assert out.shape == (2, T, 17, 3)
    assert torch.isfinite(out).all()
    assert torch.all(out[:, :, Joint.PELVIS] == 0)


def test_two_channel_keypoints_mean_confidence_one() -> None:
    kp, q, valid = _inputs()
    kp[..., 2] = 1.0
    model = _model()
    assert torch.allclose(model(kp[..., :2], q, valid), model(kp, q, valid))


def test_zero_confidence_joints_ignore_their_xy() -> None:
    kp, q, valid = _inputs()
    model = _model()
    kp[0, 3, Joint.LEFT_WRIST, 2] = 0.0
    base = model(kp, q, valid)
    moved = kp.clone()
    moved[0, 3, Joint.LEFT_WRIST, :2] = torch.tensor([5.0, -7.0])
    assert torch.allclose(model(moved, q, valid), base)
    moved[0, 3, Joint.LEFT_WRIST, :2] = float("nan")  # NaN is fine where confidence is 0
    assert torch.allclose(model(moved, q, valid), base)
    # with confidence > 0 the same move changes the output
    kp[0, 3, Joint.LEFT_WRIST, 2] = 1.0
    moved[0, 3, Joint.LEFT_WRIST] = torch.tensor([5.0, -7.0, 1.0])
    assert (model(moved, q, valid) - model(kp, q, valid)).abs().max() > 1e-6


def test_missing_imus_use_the_missing_token() -> None:
    kp, q, valid = _inputs()
    model = _model()
    valid[1, 2:5, 3] = False
    base = model(kp, q, valid)
    other = q.clone()
    other[1, 2:5, 3] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # garbage where invalid: ignored
    assert torch.allclose(model(kp, other, valid), base)
    # marking them valid again changes the result
    assert (model(kp, q, torch.ones_like(valid)) - base).abs().max() > 1e-6


def test_quaternion_sign_does_not_matter() -> None:
    kp, q, valid = _inputs()
    model = _model()
    assert torch.allclose(model(kp, -q, valid), model(kp, q, valid), atol=1e-6)


def test_bad_inputs_raise_clear_errors() -> None:
    kp, q, valid = _inputs()
    model = _model()
    with pytest.raises(InputShapeError, match=r"B x T x 17 x 3"):
        model(kp[:, :, :16], q, valid)
    with pytest.raises(InputShapeError, match=r"B x T x 6 x 4"):
        model(kp, q[:, :, :5], valid)
    with pytest.raises(InputShapeError, match=r"imu_valid"):
        model(kp, q, valid[:, :3])
    bad = kp.clone()
    bad[1, 4, Joint.RIGHT_KNEE, 0] = float("nan")
    with pytest.raises(InputShapeError, match=r"batch 1, frame 4, right_knee"):
        model(bad, q, valid)
    bad_q = q.clone()
    bad_q[0, 2, 4] *= 2.0
    with pytest.raises(InputShapeError, match=r"batch 0, frame 2, head"):
        model(kp, bad_q, valid)
    bad_q = q.clone()
    bad_q[0, 5, 1] = float("nan")
    with pytest.raises(InputShapeError, match=r"frame 5, right_forearm"):
        model(kp, bad_q, valid)
    valid[0, 5, 1] = False  # the same NaN on a sensor marked missing is accepted
    assert torch.isfinite(model(kp, bad_q, valid)).all()


def test_streaming_step_equals_causal_forward() -> None:
    model = _model(streaming=True)
    kp, q, valid = _inputs(B=2, T=12)
    valid[0, 3:6, 2] = False
    kp[1, 7, 5, 2] = 0.0
    with torch.no_grad():
        full = model(kp, q, valid)
        state = model.init_state(2)
        steps = []
        for t in range(12):
            out, state = model.step(kp[:, t], q[:, t], valid[:, t], state)
            steps.append(out)
    assert (torch.stack(steps, 1) - full).abs().max() < 1e-4


def test_streaming_model_is_causal_and_offline_model_is_not() -> None:
    kp, q, valid = _inputs(T=10)
    later = kp.clone()
    later[:, 6:, :, :2] += 0.5  # change only the future
    causal = _model(streaming=True)
    assert torch.allclose(causal(later, q, valid)[:, :6], causal(kp, q, valid)[:, :6], atol=1e-6)
    offline = _model()
    assert (offline(later, q, valid)[:, :6] - offline(kp, q, valid)[:, :6]).abs().max() > 1e-5
    with pytest.raises(VimcanError, match="streaming"):
        offline.init_state(1)


@pytest.mark.parametrize("fusion", list(FusionMode), ids=lambda f: f.value)
@pytest.mark.parametrize("groups", [0, 3, 5])
def test_ablations_run(fusion: FusionMode, groups: int) -> None:
    model = _model(fusion=fusion, groups=groups, skeleton_order=groups != 3)
    kp, q, valid = _inputs(T=3)
    out = model(kp, q, valid)
    assert out.shape == (2, 3, 17, 3) and torch.isfinite(out).all()
    changed = model(kp, torch.roll(q, 1, dims=2), valid)
    if fusion.value.startswith("vision"):
        assert torch.equal(changed, out)  # the IMUs are not used
        assert model.inertial_embed is None
    else:
        assert (changed - out).abs().max() > 1e-7


def test_skeleton_order_switch_changes_the_model() -> None:
    kp, q, valid = _inputs(T=3)
    a = _model(skeleton_order=True)
    b = _model(skeleton_order=False)
    b.load_state_dict(a.state_dict())  # same weights, only the scan order differs
    assert (a(kp, q, valid) - b(kp, q, valid)).abs().max() > 1e-6


def test_a_small_model_learns() -> None:
    """A few Adam steps on one batch lower the paper's loss a lot (gradients flow end to end)."""
    torch.manual_seed(0)
    model = Vimcan(preset("vimcan-t", **SMALL)).train()
    kp, q, valid = _inputs(B=2, T=8)
    pose = torch.randn(2, 1, 17, 3, generator=torch.Generator().manual_seed(1)) * 0.2
    target = (pose - pose[:, :, :1]).expand(2, 8, 17, 3)  # one still pose per sequence
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = vimcan_loss(model(kp, q, valid), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_config_round_trip_and_validation() -> None:
    cfg = preset("vimcan-b", fusion=FusionMode.CROSS_MAMBA, groups=3, streaming=True)
    assert VimcanConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(VimcanError, match="groups"):
        VimcanConfig(groups=4)
    with pytest.raises(VimcanError, match="unknown model preset"):
        preset("vimcan-xl")


def test_checkpoint_round_trip(tmp_path) -> None:
    model = _model(streaming=True)
    kp, q, valid = _inputs()
    path = save_checkpoint(tmp_path / "m.pt", model, {"epoch": 3, "mpjpe_mm": 41.5})
    loaded, meta = load_checkpoint(path)
    assert meta == {"epoch": 3, "mpjpe_mm": 41.5}
    assert loaded.config == model.config
    assert torch.equal(loaded(kp, q, valid), model(kp, q, valid))
    half = save_checkpoint(tmp_path / "h.pt", model, half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    loaded_half, _ = load_checkpoint(half)
    assert (loaded_half(kp, q, valid) - model(kp, q, valid)).abs().max() < 1e-2
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "x.pt", model, {"bad": object()})


def test_bad_checkpoints_name_the_path(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    # weights that do not fit the stored config
    model = _model()
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["config"]["fused_dim"] = 32
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="mismatch.pt"):
        load_checkpoint(tmp_path / "mismatch.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt"):
        load_checkpoint(tmp_path / "other.pt")


def test_inference_slicing_changes_nothing(monkeypatch) -> None:
    import vimcan_core.model.blocks as blocks

    model = _model()
    kp, q, valid = _inputs(T=40)
    with torch.no_grad():
        whole = model(kp, q, valid)
        monkeypatch.setattr(blocks, "INFERENCE_SLICE_ELEMENTS", 1000)  # many small slices
        sliced = model(kp, q, valid)
    assert torch.allclose(sliced, whole, atol=1e-6)


def test_transformer_baseline_same_interface() -> None:
    from vimcan_core.model.transformer_baseline import TransformerBaseline

    torch.manual_seed(0)
    model = TransformerBaseline(preset("vimcan-t", **SMALL)).eval()
    kp, q, valid = _inputs(T=5)
    out = model(kp, q, valid)
    assert out.shape == (2, 5, 17, 3) and torch.all(out[:, :, 0] == 0)
    # full temporal attention: a change in the last frame reaches the first
    later = kp.clone()
    later[:, -1, :, :2] += 0.5
    assert (model(later, q, valid)[:, 0] - out[:, 0]).abs().max() > 1e-6
    with pytest.raises(InputShapeError):
        model(kp[:, :, :5], q, valid)


def test_package_import_builds_nothing() -> None:
    import subprocess
    import sys

    code = ("import sys; import vimcan_core.model as m; from vimcan_core.model import preset, VimcanConfig; "
            "assert 'torch' not in sys.modules, 'config import pulled in torch'; "
            "m.Vimcan; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the inference-only step path (SSMMixer.infer / step through the C kernels) ---------------
needs_kernel = pytest.mark.skipif(scan_cpu.load_kernel() is None, reason="needs the compiled CPU kernel (cc)")


def _steps(model: Vimcan, kp: torch.Tensor, q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Every frame through ``model.step``: B x T x 17 x 3."""
    with torch.no_grad():
        state = model.init_state(kp.shape[0])
        out = []
        for t in range(kp.shape[1]):
            y, state = model.step(kp[:, t], q[:, t], valid[:, t], state)
            out.append(y)
    return torch.stack(out, 1)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lengths, k, state", [
    ((5, 3, 3, 3, 3), 2, False),  # the five body parts of one frame, both directions
    ((17,), 2, False),  # one skeleton-order sequence
    ((1,) * 6, 1, True),  # a streaming step: every token its own sequence, with carried state
    ((4, 1, 2), 1, True),  # uneven sequences longer than the conv, with state
])
def test_inference_kernels_match_their_references(lengths, k, state, dtype) -> None:
    g = torch.Generator().manual_seed(1)
    T, s, d, n, r, kw = sum(lengths), len(lengths), 12, 5, 3, 4
    offsets = scan_cpu.sequence_offsets(lengths)
    xz = torch.randn(T, 2 * d, generator=g, dtype=dtype)  # like in_proj's output: x, then z
    hist = torch.randn(s, d, kw - 1, generator=g, dtype=dtype) if state else None
    conv_w = torch.randn(k, kw, d, generator=g, dtype=dtype)
    bias = torch.randn(k * d, generator=g, dtype=dtype)
    u, h = scan_cpu.conv_silu(xz[:, :d], offsets, conv_w, bias, k, hist, want_hist=state)
    u_ref, h_ref = scan_cpu.conv_silu_ref(xz[:, :d], offsets, conv_w, bias, k, hist, want_hist=state)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert u.shape == (k, T, d) and (u - u_ref).abs().max() < tol
    if state:
        assert torch.equal(h, h_ref)
    xdbl = torch.randn(k, T, r + 2 * n, generator=g, dtype=dtype)
    dt_t = torch.randn(k, r, d, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(k, n, d, generator=g, dtype=dtype) * 3  # k x n x d, state-major
    D = torch.randn(k * d, generator=g, dtype=dtype)
    h0 = torch.randn(s, n, d, generator=g, dtype=dtype) if state else None
    y, last = scan_cpu.gated_scan(u, xdbl, offsets, dt_t, bias, A, D, xz[:, d:], h0, want_last=state)
    y_ref, last_ref = scan_cpu.gated_scan_ref(u, xdbl, offsets, dt_t, bias, A, D, xz[:, d:], h0, want_last=state)
    assert y.shape == (T, d) and (y - y_ref).abs().max() < tol * max(1.0, float(y_ref.abs().max()))
    if state:
        assert (last - last_ref).abs().max() < tol * max(1.0, float(last_ref.abs().max()))
    # a sequence scanned alone gives what it gives inside the batch (the offsets separate them)
    first = scan_cpu.sequence_offsets(lengths[:1])
    y0, _ = scan_cpu.gated_scan(u[:, :lengths[0]], xdbl[:, :lengths[0]], first, dt_t, bias, A, D,
                                xz[:lengths[0], d:], None if h0 is None else h0[:1])
    assert (y0 - y[:lengths[0]]).abs().max() < tol * max(1.0, float(y0.abs().max()))


@needs_kernel
def test_inference_kernels_refuse_bad_offsets() -> None:
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="cover 6 tokens"):
        scan_cpu.conv_silu(x, scan_cpu.sequence_offsets((2, 3)), torch.randn(1, 4, 4), torch.randn(4), 1)
    with pytest.raises(ValueError, match="at least 1"):
        scan_cpu.sequence_offsets((3, 0, 3))
    with pytest.raises(ValueError, match="single direction"):
        scan_cpu.conv_silu(x, scan_cpu.sequence_offsets((6,)), torch.randn(2, 4, 4), torch.randn(8), 2, want_hist=True)


@needs_kernel
def test_mixer_infer_equals_forward_on_each_segment() -> None:
    torch.manual_seed(0)
    mixer = SSMMixer(24, preset("vimcan-t", **SMALL), bidirectional=True).eval()
    x = torch.randn(3, 17, 24)
    with torch.no_grad():
        fast = mixer.infer(x, (5, 3, 3, 3, 3))
        ref = torch.cat([mixer(piece) for piece in x.split((5, 3, 3, 3, 3), dim=1)], dim=1)
        whole = mixer.infer(x)
        assert (fast - ref).abs().max() < 1e-5
        assert (whole - mixer(x)).abs().max() < 1e-5
        assert (whole - fast).abs().max() > 1e-3  # the segments really are scanned apart


@needs_kernel
@pytest.mark.parametrize("fusion", [FusionMode.CROSS_ATTENTION, FusionMode.VISION_ONLY])
def test_fast_step_equals_reference_step_and_forward(monkeypatch, fusion: FusionMode) -> None:
    model = _model(streaming=True, fusion=fusion)
    kp, q, valid = _inputs(B=2, T=9)
    valid[0, 2:5, 1] = False
    fast = _steps(model, kp, q, valid)
    with torch.no_grad():
        full = model(kp, q, valid)
    monkeypatch.setattr(SSMMixer, "fast_inference", False)
    ref = _steps(model, kp, q, valid)
    assert (fast - ref).abs().max() < 1e-5
    assert (fast - full).abs().max() < 1e-5


@needs_kernel
def test_fast_and_reference_steps_share_one_state_layout() -> None:
    """A stream may switch between the kernel step and the reference step at any frame (e.g.
    autograd switched on): both read and write the same conv and SSM state."""
    torch.manual_seed(3)
    mixer = SSMMixer(24, preset("vimcan-t", **SMALL), bidirectional=False).eval()
    x = torch.randn(5, 12, 24)  # Ns x L x C
    with torch.no_grad():
        full = mixer(x)
        state = mixer.init_state(5, x.device, x.dtype)
        outs = []
        for t in range(12):
            step = mixer.step if t % 2 else mixer.step_ref
            y, state = step(x[:, t], state)
            outs.append(y)
    assert state.ssm.shape == (5, mixer.d_state, mixer.d_inner)
    assert (torch.stack(outs, 1) - full).abs().max() < 1e-5


@needs_kernel
def test_fast_path_follows_parameter_changes(monkeypatch) -> None:
    """The cached derived weights (-exp(A_log), transposes) are rebuilt after load_state_dict,
    an optimizer step or a dtype change; with autograd on, step takes the reference path."""
    model = _model(streaming=True)
    kp, q, valid = _inputs(B=1, T=5)
    before = _steps(model, kp, q, valid)  # fills the caches
    other = _model(streaming=True)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.load_state_dict(other.state_dict())
    after = _steps(model, kp, q, valid)
    assert (after - before).abs().max() > 1e-3
    assert (after - _steps(other, kp, q, valid)).abs().max() < 1e-6
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(kp, q, valid).square().mean().backward()
    opt.step()
    stepped = _steps(model, kp, q, valid)
    monkeypatch.setattr(SSMMixer, "fast_inference", False)
    assert (stepped - _steps(model, kp, q, valid)).abs().max() < 1e-5
    monkeypatch.setattr(SSMMixer, "fast_inference", True)
    model.double()
    out64 = _steps(model, kp.double(), q.double(), valid)
    assert out64.dtype == torch.float64 and (out64 - stepped.double()).abs().max() < 1e-4
    # with autograd on, step is differentiable (the reference path)
    state = model.init_state(1)
    y, _ = model.step(kp[:, 0].double(), q[:, 0].double(), valid[:, 0], state)
    assert y.requires_grad


@needs_kernel
def test_fast_step_of_a_model_built_under_inference_mode() -> None:
    """Parameters created under torch.inference_mode keep no version counter: the path still runs."""
    kp, q, valid = _inputs(B=1, T=4)
    reference = _steps(_model(streaming=True), kp, q, valid)
    with torch.inference_mode():
        model = _model(streaming=True)
        out = _steps(model, kp, q, valid)
    assert (out - reference).abs().max() < 1e-6


@needs_kernel
def test_inference_kernels_read_tokens_in_scan_order() -> None:
    """With a token order the kernels equal their references and the unordered kernels run on
    the permuted tokens (output back in token order)."""
    g = torch.Generator().manual_seed(2)
    lengths, d, n, r, k = (5, 3, 4), 8, 4, 2, 2
    order = torch.randperm(12, generator=g).tolist()
    seqs, plain = scan_cpu.sequence_offsets(lengths, order), scan_cpu.sequence_offsets(lengths)
    xz = torch.randn(12, 2 * d, generator=g)
    conv_w, bias = torch.randn(k, 4, d, generator=g), torch.randn(k * d, generator=g)
    u, _ = scan_cpu.conv_silu(xz[:, :d], seqs, conv_w, bias, k)
    u_ref, _ = scan_cpu.conv_silu_ref(xz[:, :d], seqs, conv_w, bias, k)
    u_perm, _ = scan_cpu.conv_silu(xz[order, :d], plain, conv_w, bias, k)
    assert (u - u_ref).abs().max() < 1e-5 and torch.equal(u, u_perm)
    xdbl = torch.randn(k, 12, r + 2 * n, generator=g)
    args = (torch.randn(k, r, d, generator=g), bias, -torch.rand(k, n, d, generator=g), torch.randn(k * d, generator=g))
    y, _ = scan_cpu.gated_scan(u, xdbl, seqs, *args, xz[:, d:])
    y_ref, _ = scan_cpu.gated_scan_ref(u, xdbl, seqs, *args, xz[:, d:])
    y_perm, _ = scan_cpu.gated_scan(u, xdbl, plain, *args, xz[order, d:])
    assert (y - y_ref).abs().max() < 1e-5
    assert torch.equal(y[order], y_perm)
    with pytest.raises(ValueError, match="permutation"):
        scan_cpu.sequence_offsets(lengths, [0] * 12)


@needs_kernel
def test_mixer_infer_with_a_token_order_equals_forward_in_that_order() -> None:
    torch.manual_seed(0)
    mixer = SSMMixer(24, preset("vimcan-t", **SMALL), bidirectional=True).eval()
    x = torch.randn(2, 17, 24)
    order = tuple(torch.randperm(17).tolist())
    with torch.no_grad():
        fast = mixer.infer(x, (5, 3, 3, 3, 3), order)
        xo = x[:, list(order)]
        ref = torch.cat([mixer(piece) for piece in xo.split((5, 3, 3, 3, 3), dim=1)], dim=1)
        assert (fast[:, list(order)] - ref).abs().max() < 1e-5
        mixer.fast_inference = False  # the fallback takes the same arguments
        assert (mixer.infer(x, (5, 3, 3, 3, 3), order) - fast).abs().max() < 1e-5
