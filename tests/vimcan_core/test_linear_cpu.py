"""linear_cpu: the live step's linear layers in one C call, against PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vimcan_core.model import linear_cpu, preset, scan_cpu
from vimcan_core.model.blocks import BiSTSSM, SSMState

needs_kernel = pytest.mark.skipif(scan_cpu.load_kernel() is None, reason="the CPU kernel did not build (no C compiler)")
pytestmark = [needs_kernel, pytest.mark.usefixtures("one_torch_thread")]


def _layer(K: int, N: int, bias: bool = True, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, nn.LayerNorm]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g) / K**0.5
    b = torch.randn(N, generator=g) if bias else None
    norm = nn.LayerNorm(K)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(K, generator=g))
        norm.bias.copy_(0.2 * torch.randn(K, generator=g))
    return W, b, norm


@pytest.mark.parametrize("M,K,N", [(1, 3, 7), (5, 64, 256), (17, 136, 544), (23, 544, 136), (6, 16, 16), (7, 17, 33)])
@pytest.mark.parametrize("options", ["plain", "norm", "gelu", "residual", "all", "no bias"])
def test_equals_pytorch(M: int, K: int, N: int, options: str) -> None:
    """Every row count around the 6-row blocks, widths that are not multiples of the 16-column
    panels, each prologue / epilogue alone and all together: PyTorch's result to float rounding."""
    W, b, norm = _layer(K, N, bias=options != "no bias")
    x = torch.randn(M, K) * 2
    residual = torch.randn(M, N)
    kw = {"plain": {}, "no bias": {}, "norm": {"norm": norm}, "gelu": {"gelu": True}, "residual": {"residual": residual},
          "all": {"norm": norm, "gelu": True, "residual": residual}}[options]
    with torch.no_grad():
        y = linear_cpu.linear(x, linear_cpu.pack_linear(W, b), **kw)
        ref = linear_cpu.linear_ref(x, W, b, **kw)
    assert y.shape == (M, N) and y.dtype == torch.float32
    assert (y - ref).abs().max() <= 2e-6 * max(1.0, ref.abs().max().item())


def test_gelu_is_the_exact_erf_form() -> None:
    """Across the range a network produces (and far tails), within 5e-7 of F.gelu (not its tanh
    approximation, which is 4.7e-4 away near |x| = 2)."""
    x = torch.linspace(-12, 12, 240_001)[:, None]
    identity = linear_cpu.pack_linear(torch.eye(1))
    with torch.no_grad():
        g = linear_cpu.linear(x, identity, gelu=True)
    err = (g - F.gelu(x)).abs().max().item()
    assert err < 5e-7, err
    assert (F.gelu(x, approximate="tanh") - F.gelu(x)).abs().max().item() > 100 * err


def test_strided_input_and_bad_shapes() -> None:
    W, b, _ = _layer(8, 20)
    packed = linear_cpu.pack_linear(W, b)
    wide = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.allclose(linear_cpu.linear(wide[:, ::2], packed), F.linear(wide[:, ::2], W, b), atol=1e-6)
        with pytest.raises(ValueError, match="x has 9 features, the layer takes 8"):
            linear_cpu.linear(torch.randn(4, 9), packed)
        with pytest.raises(ValueError, match=r"residual must be 4 x 20, got \(4, 19\)"):
            linear_cpu.linear(torch.randn(4, 8), packed, residual=torch.randn(4, 19))
    assert not linear_cpu.available(torch.randn(2, 8, dtype=torch.float64))
    assert not linear_cpu.available(torch.randn(2, 8))  # autograd on (tests run with it)


def _block(seed: int, bidirectional: bool) -> BiSTSSM:
    torch.manual_seed(seed)
    config = preset("vimcan-t", embed_dim=24, fused_dim=24, d_state=4, mlp_ratio=2.0)
    block = BiSTSSM(24, config, bidirectional=bidirectional).eval()
    with torch.no_grad():  # LayerNorms away from the identity, so the fused prologue is exercised
        for norm in (block.norm1, block.norm2):
            norm.weight.mul_(torch.rand(24) + 0.5)
            norm.bias.add_(0.1 * torch.randn(24))
    return block


@pytest.mark.parametrize("segments,order", [(None, None), ((5, 3, 3, 3, 3), (0, 7, 8, 9, 10, 1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16))])
def test_fused_block_equals_the_unfused_one(monkeypatch, segments, order) -> None:
    """A frame's spatial scan (17 tokens, one sequence or five body-part segments in scan order)
    and a causal step: the fused block (four linear_cpu calls) equals the block through F.linear."""
    spatial = _block(1, bidirectional=True)
    x = torch.randn(2, 17, 24)
    with torch.no_grad():
        fused = spatial.infer(x, segments, order)
        monkeypatch.setattr(BiSTSSM, "fused_linear", False)
        plain = spatial.infer(x, segments, order)
        monkeypatch.setattr(BiSTSSM, "fused_linear", True)
    assert (fused - plain).abs().max() < 1e-5 and fused.abs().max() > 0.1

    temporal = _block(2, bidirectional=False)
    xs = torch.randn(6, 17, 24)  # T x Ns x C
    outs = {}
    for flag in (True, False):
        monkeypatch.setattr(BiSTSSM, "fused_linear", flag)
        state = temporal.init_state(17, xs.device, xs.dtype)
        ys = []
        with torch.no_grad():
            for t in range(len(xs)):
                y, state = temporal.step(xs[t], state)
                ys.append(y)
        assert isinstance(state, SSMState)
        outs[flag] = (torch.stack(ys), state)
    assert (outs[True][0] - outs[False][0]).abs().max() < 1e-5
    assert (outs[True][1].ssm - outs[False][1].ssm).abs().max() < 1e-5


def test_packed_weights_follow_in_place_changes(monkeypatch) -> None:
    """An optimizer step changes the weights in place: the packed copies are made again."""
    block = _block(3, bidirectional=True)
    x = torch.randn(1, 17, 24)
    with torch.no_grad():
        before = block.infer(x)
        block.mlp.fc1.weight.add_(0.5)
        block.mixer.out_proj.weight.mul_(-1.0)
        after = block.infer(x)
        monkeypatch.setattr(BiSTSSM, "fused_linear", False)
        expected = block.infer(x)
    assert (after - before).abs().max() > 1e-2
    assert (after - expected).abs().max() < 1e-5
