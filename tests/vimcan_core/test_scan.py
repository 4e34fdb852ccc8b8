"""The selective-scan backends against the sequential reference (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch

from vimcan_core.errors import InputShapeError
from vimcan_core.model import scan_cpu
from vimcan_core.model.scan import BackendUnavailable, ScanBackend, selective_scan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST_BACKENDS = [ScanBackend.CHUNKED]
if scan_cpu.load_kernel() is not None:
    FAST_BACKENDS.append(ScanBackend.CPU_KERNEL)


def _inputs(b, d, l, n, groups=None, dtype=torch.float32, seed=0, delta_shift=-1.0):
    """Random scan inputs, Mamba-like scales: A = -(1..n) jittered, delta around softplus(-1)."""
    g = torch.Generator().manual_seed(seed)
    bc_shape = (b, n, l) if groups is None else (b, groups, n, l)
    t = {
        "u": torch.randn(b, d, l, generator=g),
        "delta": torch.randn(b, d, l, generator=g) * 0.5 + delta_shift,
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1) * (0.5 + torch.rand(d, n, generator=g)),
        "B": torch.randn(*bc_shape, generator=g),
        "C": torch.randn(*bc_shape, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, l, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.1,
    }
    return {k: v.to(dtype).requires_grad_() for k, v in t.items()}


def _run(inputs, backend, use_z, use_D, use_bias, h0=None):
    out, last = selective_scan(
        inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
        D=inputs["D"] if use_D else None, z=inputs["z"] if use_z else None,
        delta_bias=inputs["delta_bias"] if use_bias else None, delta_softplus=True,
        return_last_state=True, initial_state=h0, backend=backend,
    )
    # a loss that weighs every output and the last state differently
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * w).sum() + (last ** 2).sum()
    names = [k for k in ("u", "delta", "A", "B", "C") if True]
    names += [k for k, on in (("D", use_D), ("z", use_z), ("delta_bias", use_bias)) if on]
    grads = torch.autograd.grad(loss, [inputs[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-2))


@pytest.mark.parametrize("backend", FAST_BACKENDS, ids=lambda b: b.value)
@pytest.mark.parametrize(
    "b, d, l, n, groups, use_z, use_D, use_bias",
    [
        (2, 4, 1, 4, None, True, True, True),  # L = 1
        (3, 6, 17, 8, None, False, False, False),  # odd L, nothing optional
        (2, 8, 81, 16, 2, True, False, True),  # grouped B/C (the bidirectional layout)
        (1, 4, 333, 16, None, False, True, False),  # odd L spanning several chunks
        (1, 2, 4000, 4, None, True, True, True),  # long sequence
        (2, 20, 9, 8, None, False, True, False),  # channels: two full blocks of kernel lanes and a partial one
        (2, 24, 13, 4, 2, True, False, False),  # 12 channels per group: a block of 8 and one of 4 in each
    ],
)
def test_fast_backend_matches_reference(backend, b, d, l, n, groups, use_z, use_D, use_bias) -> None:
    inputs = _inputs(b, d, l, n, groups)
    ref = _run(inputs, ScanBackend.REFERENCE, use_z, use_D, use_bias)
    fast = _run(inputs, backend, use_z, use_D, use_bias)
    assert _rel_err(fast[0], ref[0]) < 1e-4
    assert _rel_err(fast[1], ref[1]) < 1e-4
    for name, g_ref in ref[2].items():
        assert _rel_err(fast[2][name], g_ref) < 1e-4, name


@pytest.mark.parametrize("backend", FAST_BACKENDS, ids=lambda b: b.value)
def test_initial_state_and_its_gradient(backend) -> None:
    inputs = _inputs(2, 4, 9, 4, dtype=torch.float64)
    h0_ref = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    h0_fast = h0_ref.detach().clone().requires_grad_()
    y_ref, last_ref, _ = _run(inputs, ScanBackend.REFERENCE, True, True, True, h0_ref)
    y_fast, last_fast, _ = _run(inputs, backend, True, True, True, h0_fast)
    assert torch.allclose(y_fast, y_ref, atol=1e-10) and torch.allclose(last_fast, last_ref, atol=1e-10)
    # splitting a sequence in two and carrying the state gives the whole-sequence result
    u, delta, A, B, C = (inputs[k].detach() for k in ("u", "delta", "A", "B", "C"))
    y_all, h_all = selective_scan(u, delta, A, B, C, return_last_state=True, backend=backend)
    y1, h1 = selective_scan(u[..., :4], delta[..., :4], A, B[..., :4], C[..., :4], return_last_state=True, backend=backend)
    y2, h2 = selective_scan(u[..., 4:], delta[..., 4:], A, B[..., 4:], C[..., 4:], return_last_state=True,
                            initial_state=h1, backend=backend)
    assert torch.allclose(torch.cat((y1, y2), -1), y_all, atol=1e-10) and torch.allclose(h2, h_all, atol=1e-10)


def test_chunked_is_safe_with_large_decays() -> None:
    """Large delta * A forces short chunks; nothing overflows and the result stays exact."""
    inputs = _inputs(2, 4, 300, 16, delta_shift=3.0)  # delta ~ 3, A up to -24: steps of |dA| ~ 70
    ref = _run(inputs, ScanBackend.REFERENCE, False, True, False)
    fast = _run(inputs, ScanBackend.CHUNKED, False, True, False)
    assert torch.isfinite(fast[0]).all()
    assert _rel_err(fast[0], ref[0]) < 1e-4
    for name, g_ref in ref[2].items():
        assert torch.isfinite(fast[2][name]).all() and _rel_err(fast[2][name], g_ref) < 1e-4, name


@pytest.mark.parametrize("backend", FAST_BACKENDS, ids=lambda b: b.value)
def test_gradcheck_float64(backend) -> None:
    inputs = _inputs(1, 2, 5, 3, groups=2, dtype=torch.float64)
    args = tuple(inputs[k] for k in ("u", "delta", "A", "B", "C"))
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan(*a, delta_softplus=True, backend=backend), args, eps=1e-6, atol=1e-6
    )


def test_bad_shapes_are_named() -> None:
    t = _inputs(2, 4, 5, 3)
    with pytest.raises(InputShapeError, match="b x n x l"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"][:, :, :4], t["C"])
    with pytest.raises(InputShapeError, match="A must be d x n"):
        selective_scan(t["u"], t["delta"], t["A"][:3], t["B"], t["C"])


def test_cuda_backend_without_mamba_ssm_says_how_to_fix() -> None:
    from vimcan_core.model.scan import _mamba_ssm_fn

    if _mamba_ssm_fn() is not None:
        pytest.skip("mamba_ssm is installed here")
    t = _inputs(1, 2, 3, 2)
    with pytest.raises(BackendUnavailable, match="pip install mamba-ssm"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend=ScanBackend.CUDA)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", [ScanBackend.CHUNKED, ScanBackend.AUTO], ids=lambda b: b.value)
def test_cuda_matches_reference(backend) -> None:
    inputs = {k: v.detach().cuda().requires_grad_() for k, v in _inputs(2, 8, 81, 16, groups=2).items()}
    ref = _run({k: v.detach().cpu().requires_grad_() for k, v in inputs.items()}, ScanBackend.REFERENCE, True, True, True)
    fast = _run(inputs, backend, True, True, True)
    assert _rel_err(fast[0].cpu(), ref[0]) < 1e-4
    for name, g_ref in ref[2].items():
        assert _rel_err(fast[2][name].cpu(), g_ref) < 1e-3, name


def test_auto_picks_the_cpu_kernel_when_it_builds() -> None:
    from vimcan_core.model.scan import resolve_backend

    expected = ScanBackend.CPU_KERNEL if scan_cpu.load_kernel() is not None else ScanBackend.CHUNKED
    assert resolve_backend(ScanBackend.AUTO, torch.device("cpu")) is expected
    # the kernel takes no half precision: AUTO falls back to the chunked scan
    assert resolve_backend(ScanBackend.AUTO, torch.device("cpu"), dtype=torch.bfloat16) is ScanBackend.CHUNKED


# --- the chunked scan's plan and its special paths ---------------------------------------------


def _chunked_vs_reference(inputs, use_z=False, use_D=True, use_bias=False, h0=None, tol=1e-4):
    h0_ref = h0.detach().clone().requires_grad_() if h0 is not None else None
    ref = _run(inputs, ScanBackend.REFERENCE, use_z, use_D, use_bias, h0_ref)
    fast = _run(inputs, ScanBackend.CHUNKED, use_z, use_D, use_bias, h0)
    assert torch.isfinite(fast[0]).all() and torch.isfinite(fast[1]).all()
    assert _rel_err(fast[0], ref[0]) < tol
    assert _rel_err(fast[1], ref[1]) < tol
    for name, g_ref in ref[2].items():
        assert torch.isfinite(fast[2][name]).all() and _rel_err(fast[2][name], g_ref) < tol, name


def _plan_for(inputs, softplus=True):
    from vimcan_core.model.scan import _plan

    delta = inputs["delta"].detach()
    return _plan(torch.nn.functional.softplus(delta) if softplus else delta, inputs["A"].detach())


def test_mamba_like_window_is_one_chunk_and_exact() -> None:
    """An 81-frame window with Mamba-like deltas takes the single-chunk path (one host sync)."""
    inputs = _inputs(2, 16, 81, 16, delta_shift=-3.0)
    lc, bs, nonneg = _plan_for(inputs)
    assert (lc, bs, nonneg) == (81, 2, True)
    _chunked_vs_reference(inputs, use_z=True, use_bias=True)


def test_long_sequence_is_cut_into_safe_chunks() -> None:
    from vimcan_core.model.scan import MAX_CHUNK_LEN, SAFE_LOG

    inputs = _inputs(1, 4, 700, 16, delta_shift=0.0)  # delta ~ 0.7, |A| up to 24: ~17 per step
    lc, _, _ = _plan_for(inputs)
    assert 1 < lc < MAX_CHUNK_LEN
    # the plan's promise: inside every chunk, the steps after the first stay within 2 * SAFE_LOG
    steps = torch.nn.functional.softplus(inputs["delta"].detach()) * inputs["A"].detach().abs().amax(1)[:, None]
    for t0 in range(0, 700, lc):
        assert float(steps[..., t0 + 1:t0 + lc].sum(-1).amax()) <= 2 * SAFE_LOG
    _chunked_vs_reference(inputs)


def test_huge_steps_fall_back_to_one_step_chunks() -> None:
    """A single step whose log decay is far beyond float32's exponent range (~-480): chunks of
    one step, applied explicitly; the decay underflows to 0 exactly as in the reference."""
    inputs = _inputs(1, 3, 40, 16, delta_shift=20.0)
    assert _plan_for(inputs)[0] == 1
    _chunked_vs_reference(inputs)


def test_mixed_huge_and_tiny_steps() -> None:
    inputs = _inputs(2, 4, 90, 8, delta_shift=-3.0)
    with torch.no_grad():
        inputs["delta"][:, :, 30] = 15.0  # one reset step in the middle of the window
        inputs["delta"][1, 2, 60] = 12.0
    _chunked_vs_reference(inputs, use_z=True)


def test_very_small_deltas_one_chunk() -> None:
    """delta ~ 1e-6 (decays of ~1, states that accumulate): one chunk, exact."""
    inputs = _inputs(1, 4, 120, 16, delta_shift=-14.0)
    assert _plan_for(inputs)[0] == 120
    _chunked_vs_reference(inputs, use_bias=True)


def test_negative_deltas_without_softplus() -> None:
    """Raw deltas of either sign (growing and decaying states): the exponents are centred on
    their range, not on the chunk's end."""
    g = torch.Generator().manual_seed(5)
    b, d, l, n = 2, 4, 50, 4
    t = {
        "u": torch.randn(b, d, l, generator=g), "delta": torch.randn(b, d, l, generator=g) * 0.05,
        "A": -torch.rand(d, n, generator=g) - 0.5, "B": torch.randn(b, n, l, generator=g),
        "C": torch.randn(b, n, l, generator=g),
    }
    assert not _plan_for(t, softplus=False)[2]
    args = {k: v.double().requires_grad_() for k, v in t.items()}
    outs = {}
    for backend in (ScanBackend.REFERENCE, ScanBackend.CHUNKED):
        y, last = selective_scan(args["u"], args["delta"], args["A"], args["B"], args["C"],
                                 return_last_state=True, backend=backend)
        grads = torch.autograd.grad((y * torch.cos(y)).sum() + last.sum(), list(args.values()))
        outs[backend] = (y.detach(), last.detach(), grads)
    (y_r, l_r, g_r), (y_c, l_c, g_c) = outs[ScanBackend.REFERENCE], outs[ScanBackend.CHUNKED]
    assert torch.allclose(y_c, y_r, atol=1e-10) and torch.allclose(l_c, l_r, atol=1e-10)
    for a, r in zip(g_c, g_r):
        assert torch.allclose(a, r, atol=1e-9)


@pytest.mark.parametrize("saved", [True, False], ids=["keeps-states", "recomputes"])
@pytest.mark.parametrize("slices", [False, True], ids=["whole-batch", "batch-slices"])
def test_chunked_memory_modes_match_reference(monkeypatch, saved, slices) -> None:
    """The backward from kept decays/states and from recomputed chunks, and batch slicing."""
    from vimcan_core.model import scan

    if not saved:
        monkeypatch.setattr(scan, "MAX_SAVED_ELEMENTS", 0)
    if slices:
        monkeypatch.setattr(scan, "MAX_CHUNK_ELEMENTS", 2 * 8 * 16 * 64)
    inputs = _inputs(5, 8, 150, 16, groups=2, delta_shift=-1.0)
    h0 = torch.randn(5, 8, 16, generator=torch.Generator().manual_seed(7), requires_grad=True)
    _chunked_vs_reference(inputs, use_z=True, use_bias=True, h0=h0)


def test_second_backward_with_retained_graph() -> None:
    """The first backward hands its kept buffers back to the scratch pool; a second one
    (retain_graph) recomputes them and gives the same gradients."""
    inputs = _inputs(2, 4, 81, 8)
    y = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                       delta_softplus=True, backend=ScanBackend.CHUNKED)
    loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum()
    first = torch.autograd.grad(loss, [inputs["A"], inputs["delta"]], retain_graph=True)
    # dirty the pool with buffers of the same size
    selective_scan(inputs["u"], inputs["delta"] * 2, inputs["A"], inputs["B"], inputs["C"],
                   delta_softplus=True, backend=ScanBackend.CHUNKED).sum().backward()
    second = torch.autograd.grad(loss, [inputs["A"], inputs["delta"]])
    for a, b in zip(first, second):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_chunked_forward_without_grad() -> None:
    inputs = {k: v.detach() for k, v in _inputs(2, 8, 200, 16, delta_shift=0.0).items()}
    with torch.inference_mode():
        ref = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                             delta_softplus=True, backend=ScanBackend.REFERENCE)
        fast = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                              delta_softplus=True, backend=ScanBackend.CHUNKED)
    assert _rel_err(fast, ref) < 1e-4


def test_scratch_pool_reuses_and_caps() -> None:
    from vimcan_core.model.scan import _Scratch

    pool = _Scratch(max_bytes=1000 * 4)
    like = torch.zeros(1)
    a = pool.take((10, 20), like)
    ptr = a.data_ptr()
    pool.give(a)
    b = pool.take((5, 30), like)  # 150 <= 200 elements: the same storage comes back
    assert b.shape == (5, 30) and b.data_ptr() == ptr
    pool.give(b, torch.empty(2000))  # the big one is over the cap and dropped
    assert pool.take((2000,), like).data_ptr() != ptr
    assert pool.take((200,), like).data_ptr() == ptr


def _conv_silu_ref(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    kw, l = w.shape[-1], x.shape[-1]
    return torch.nn.functional.silu(torch.nn.functional.conv1d(x, w, b, padding=kw - 1, groups=x.shape[1])[..., :l])


@pytest.mark.skipif(scan_cpu.load_kernel() is None, reason="the CPU kernel did not build here")
@pytest.mark.parametrize("ns, d, l, kw", [(3, 5, 11, 4), (2, 7, 2, 4), (4, 3, 1, 4), (2, 6, 9, 2)])
def test_conv_silu_kernel_matches_conv1d(ns, d, l, kw) -> None:
    """The training conv kernel equals conv1d + SiLU in value and in every gradient, including
    rows shorter than the filter; float64 passes gradcheck."""
    g = torch.Generator().manual_seed(ns * 100 + l)
    x = torch.randn(ns, d, l, generator=g, requires_grad=True)
    w = torch.randn(d, 1, kw, generator=g, requires_grad=True)
    b = torch.randn(d, generator=g, requires_grad=True)
    gy = torch.randn(ns, d, l, generator=g)
    y = scan_cpu.KernelConvSilu.apply(x, w, b)
    y_ref = _conv_silu_ref(x, w, b)
    assert (y - y_ref).abs().max() < 1e-5
    for got, want in zip(torch.autograd.grad(y, (x, w, b), gy), torch.autograd.grad(y_ref, (x, w, b), gy)):
        assert _rel_err(got, want) < 1e-5
    args = tuple(t.detach().double().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: scan_cpu.KernelConvSilu.apply(*a), args, eps=1e-6, atol=1e-6)


def test_conv_silu_dispatch_and_bad_shapes() -> None:
    """``causal_conv1d_silu`` runs strided input and dtypes the kernel lacks (bfloat16: conv1d),
    and names the shapes it expects."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 4, generator=g).transpose(1, 2)  # 2 x 4 x 9, strided
    w, b = torch.randn(4, 1, 4, generator=g), torch.randn(4, generator=g)
    assert (scan_cpu.causal_conv1d_silu(x, w, b) - _conv_silu_ref(x, w, b)).abs().max() < 1e-5
    y16 = scan_cpu.causal_conv1d_silu(x.bfloat16(), w.bfloat16(), b.bfloat16())
    assert y16.dtype == torch.bfloat16 and (y16.float() - _conv_silu_ref(x, w, b)).abs().max() < 0.1
    with pytest.raises(ValueError, match="weight d x 1 x kw"):
        scan_cpu.causal_conv1d_silu(x, torch.randn(5, 1, 4), b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_chunked_runs_half_precision(dtype) -> None:
    """Half-precision inputs (e.g. under autocast) give finite outputs and gradients of their own
    dtype, close to the float32 reference; float16 alone overflowed in the factorised decays."""
    inputs = _inputs(2, 8, 200, 16)
    args = [inputs[k].detach().to(dtype).requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    out = selective_scan(*args, delta_softplus=True, backend=ScanBackend.CHUNKED)
    ref = selective_scan(*(inputs[k].detach() for k in ("u", "delta", "A", "B", "C")), delta_softplus=True,
                         backend=ScanBackend.REFERENCE)
    assert out.dtype == dtype and _rel_err(out.detach().float(), ref) < 0.02
    grads = torch.autograd.grad(out.float().square().sum(), args)
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


@pytest.mark.skipif(scan_cpu.load_kernel() is None, reason="the CPU kernel did not build here")
@pytest.mark.parametrize("softplus", [True, False])
def test_kernel_takes_delta_bias_and_softplus_itself(softplus) -> None:
    """The kernel adds delta_bias and applies softplus in its own pass: outputs and the gradients
    of the raw delta and the bias equal the reference's (float64 gradcheck too)."""
    g = torch.Generator().manual_seed(11)
    b, d, l, n = 2, 12, 19, 4
    t = {"u": torch.randn(b, d, l, generator=g), "delta": torch.randn(b, d, l, generator=g) * (1.0 if softplus else 0.05),
         "A": -torch.rand(d, n, generator=g) - 0.5, "B": torch.randn(b, n, l, generator=g),
         "C": torch.randn(b, n, l, generator=g), "delta_bias": torch.randn(d, generator=g) * (1.0 if softplus else 0.02)}
    t["delta"][0, 0, :3] = torch.tensor([25.0, -30.0, 19.0]) if softplus else t["delta"][0, 0, :3]  # both sides of the threshold
    outs = {}
    for backend in (ScanBackend.REFERENCE, ScanBackend.CPU_KERNEL):
        args = {k: v.double().requires_grad_() for k, v in t.items()}
        y = selective_scan(args["u"], args["delta"], args["A"], args["B"], args["C"], delta_bias=args["delta_bias"],
                           delta_softplus=softplus, backend=backend)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(), list(args.values()))
        outs[backend] = (y.detach(), dict(zip(args, grads)))
    ref, ker = outs[ScanBackend.REFERENCE], outs[ScanBackend.CPU_KERNEL]
    assert _rel_err(ker[0], ref[0]) < 1e-10
    for name, g_ref in ref[1].items():
        assert _rel_err(ker[1][name], g_ref) < 1e-9, name
    small = {k: v[:1, :4, :6].double().requires_grad_() if v.dim() == 3 else v.double().requires_grad_() for k, v in t.items()}
    small["A"] = small["A"][:4].detach().requires_grad_()
    small["B"], small["C"] = (small[k][:1, :, :6].detach().requires_grad_() for k in ("B", "C"))
    small["delta_bias"] = small["delta_bias"][:4].detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda u, dl, A, B, C, bias: selective_scan(u, dl, A, B, C, delta_bias=bias, delta_softplus=softplus,
                                                    backend=ScanBackend.CPU_KERNEL),
        tuple(small[k] for k in ("u", "delta", "A", "B", "C", "delta_bias")), eps=1e-6, atol=1e-6)
