"""The selective scan of Mamba (S6), with three interchangeable backends.

One function, ``selective_scan``, with the semantics of ``mamba_ssm``'s ``selective_scan_ref``::

    delta = softplus(delta + delta_bias)            (each optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      h: b x d x n, h_{-1} = initial_state or 0
    y_t   = C_t . h_t + D * u_t
    out   = y * silu(z)

Shapes (``r`` = real):

* ``u``, ``delta``, ``z``: r(b d l)
* ``A``: r(d n) (negative real parts: ``A = -exp(A_log)``)
* ``B``, ``C``: r(b n l), or r(b g n l) where the d channels are split into g equal groups and
  group k uses ``B[:, k]`` (mamba's "variable B/C with groups"; we use it to run the two
  directions of a bidirectional scan as one call)
* ``D``, ``delta_bias``: r(d)
* ``initial_state`` (our addition, for streaming and tests): r(b d n)
* returns ``out`` r(b d l), and with ``return_last_state`` also ``last_state`` r(b d n).

Backends (``ScanBackend``):

* ``REFERENCE``: the plain sequential recurrence, one time step at a time. Slow; ground truth.
* ``CHUNKED``: vectorised pure PyTorch, the default on CPU. Time is cut into chunks; inside a chunk
  the recurrence is solved in closed form with cumulative sums of the log decays
  (``h_t = e^{c_t} (h_0 + sum_{s<=t} e^{-c_s} x_s)``, ``c`` the cumulative ``delta * A``). The chunk
  length is chosen so that ``|c| <= SAFE_LOG`` inside a chunk, so the exponentials never
  overflow, whatever the sequence length. It is a custom autograd function: the forward pass keeps
  only the state at each chunk start, the backward pass recomputes the chunk's states and runs the
  adjoint recurrence in the same closed form. Batch and chunk are both sliced so no temporary
  exceeds ``MAX_CHUNK_ELEMENTS`` elements (never a full b x d x l x n tensor).
* ``CPU_KERNEL``: the same recurrence as a fused C loop (``scan_cpu.py``, compiled on first use
  with the system C compiler): one pass over the inputs, states in registers, several times
  faster than ``CHUNKED`` for training on a CPU.
* ``CUDA``: ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (fused kernel) for
  CUDA tensors, when ``mamba_ssm`` imports.
* ``AUTO``: ``CUDA`` for CUDA tensors when ``mamba_ssm`` imports; on the CPU ``CPU_KERNEL`` when
  it builds, else ``CHUNKED``; on another device ``CHUNKED`` (the choice is logged once).
"""

from __future__ import annotations

import logging
import math
from enum import Enum
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from vimcan_core.errors import InputShapeError, VimcanError
from vimcan_core.model import scan_cpu

log = logging.getLogger(__name__)

#: largest |cumulative log decay| allowed inside one chunk (e^60 ~ 1e26, far from float32 overflow)
SAFE_LOG = 60.0
#: longest chunk along time (longer chunks: fewer Python iterations, larger temporaries)
MAX_CHUNK_LEN = 128
#: cap on the elements of one b_slice x d x l_chunk x n temporary (4M floats = 16 MB)
MAX_CHUNK_ELEMENTS = 1 << 22


class ScanBackend(Enum):
    """Which implementation of the selective scan runs."""

    AUTO = "auto"
    REFERENCE = "reference"
    CHUNKED = "chunked"
    CPU_KERNEL = "cpu-kernel"
    CUDA = "cuda"


class BackendUnavailable(VimcanError, RuntimeError):
    """A requested scan backend cannot run here (missing package or device)."""


@lru_cache(maxsize=1)
def _mamba_ssm_fn():
    """``selective_scan_fn`` from ``mamba_ssm``, or None when it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore
    except Exception as exc:  # ImportError, or a CUDA extension that fails to load
        log.debug("mamba_ssm unavailable: %s", exc)
        return None
    return selective_scan_fn


def cuda_scan_available() -> bool:
    """True when ``mamba_ssm``'s fused kernel imports and a CUDA device is present."""
    return torch.cuda.is_available() and _mamba_ssm_fn() is not None


_logged_choice: set[str] = set()


def resolve_backend(backend: ScanBackend, device: torch.device, needs_initial_state: bool = False,
                    dtype: torch.dtype = torch.float32, d_state: int = 16) -> ScanBackend:
    """The backend that will actually run for tensors on ``device`` (AUTO resolved)."""
    if backend is ScanBackend.CPU_KERNEL:
        if device.type != "cpu" or dtype not in (torch.float32, torch.float64) or scan_cpu.load_kernel() is None:
            raise BackendUnavailable(
                f"scan backend 'cpu-kernel' needs float32/64 CPU tensors and a C compiler (cc with OpenMP); "
                f"got {dtype} on {device}, kernel {'built' if scan_cpu.load_kernel() else 'not built (see the log)'}"
            )
        return backend
    if backend is ScanBackend.CUDA:
        if _mamba_ssm_fn() is None:
            raise BackendUnavailable(
                "scan backend 'cuda' needs mamba_ssm, which is not installed or does not load. "
                "To use it, install it on a CUDA machine: pip install mamba-ssm causal-conv1d "
                "(or use backend 'auto' / 'chunked')."
            )
        if device.type != "cuda":
            raise BackendUnavailable(f"scan backend 'cuda' needs CUDA tensors, got tensors on {device}")
        if needs_initial_state:
            raise BackendUnavailable("scan backend 'cuda' does not take an initial_state; use 'chunked'")
        return backend
    if backend is ScanBackend.AUTO:
        use_cuda = device.type == "cuda" and not needs_initial_state and _mamba_ssm_fn() is not None
        use_kernel = (device.type == "cpu" and dtype in (torch.float32, torch.float64)
                      and d_state <= scan_cpu.MAX_STATE and scan_cpu.load_kernel() is not None)
        chosen = ScanBackend.CUDA if use_cuda else ScanBackend.CPU_KERNEL if use_kernel else ScanBackend.CHUNKED
        key = f"{device.type}:{chosen.value}"
        if key not in _logged_choice:
            _logged_choice.add(key)
            log.info("selective scan on %s uses the %s backend", device.type, chosen.value)
        return chosen
    return backend


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, int, int, int, int]:
    """Validate the argument shapes; returns (b, d, l, n, g)."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise InputShapeError(f"selective_scan: u and delta must both be b x d x l, got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, d, l = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise InputShapeError(f"selective_scan: A must be d x n = {d} x n, got {tuple(A.shape)}")
    n = A.shape[1]
    for name, m in (("B", B), ("C", C)):
        ok3 = m.dim() == 3 and tuple(m.shape) == (b, n, l)
        ok4 = m.dim() == 4 and m.shape[0] == b and m.shape[2:] == (n, l) and d % m.shape[1] == 0
        if not (ok3 or ok4):
            raise InputShapeError(
                f"selective_scan: {name} must be b x n x l = {b} x {n} x {l} or b x g x n x l with g dividing d={d}, "
                f"got {tuple(m.shape)}"
            )
    gB = 1 if B.dim() == 3 else B.shape[1]
    gC = 1 if C.dim() == 3 else C.shape[1]
    if gB != gC:
        raise InputShapeError(f"selective_scan: B and C must have the same number of groups, got {gB} and {gC}")
    return b, d, l, n, gB


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: Tensor | None = None,
    backend: ScanBackend = ScanBackend.AUTO,
) -> Tensor | tuple[Tensor, Tensor]:
    """The selective scan (see the module docstring for the shapes and the recurrence)."""
    b, d, l, n, g = _check_shapes(u, delta, A, B, C)
    chosen = resolve_backend(backend, u.device, initial_state is not None, u.dtype, n)
    if chosen is ScanBackend.CUDA:
        fn = _mamba_ssm_fn()
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    if chosen is ScanBackend.REFERENCE:
        y, last = _scan_reference(u, delta, A, B, C, initial_state)
    else:
        Bg = B if B.dim() == 4 else B.unsqueeze(1)  # b x g x n x l
        Cg = C if C.dim() == 4 else C.unsqueeze(1)  # b x g x n x l
        if chosen is ScanBackend.CPU_KERNEL:  # no zero state or unused last state materialised
            y, last = scan_cpu.KernelScan.apply(u, delta, A, Bg, Cg, initial_state, return_last_state)
        else:
            h0 = initial_state if initial_state is not None else u.new_zeros(b, d, n)
            y, last = _ChunkedScan.apply(u, delta, A, Bg, Cg, h0)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return (y, last) if return_last_state else y


def _scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
    """The sequential recurrence (after delta_bias/softplus); returns y b x d x l and h_last b x d x n."""
    b, d, l = u.shape
    n = A.shape[1]
    if B.dim() == 4:  # b x g x n x l -> b x d x n x l, each group repeated over its channels
        B = B.repeat_interleave(d // B.shape[1], dim=1)
        C = C.repeat_interleave(d // C.shape[1], dim=1)
    else:
        B = B.unsqueeze(1)  # b x 1 x n x l
        C = C.unsqueeze(1)
    h = h0 if h0 is not None else u.new_zeros(b, d, n)
    ys = []
    for t in range(l):
        decay = torch.exp(delta[:, :, t, None] * A)  # b x d x n
        h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]  # b x d x n
        ys.append((h * C[..., t]).sum(-1))  # b x d
    return torch.stack(ys, dim=-1), h


def _plan(u: Tensor, delta: Tensor, A: Tensor, g: int) -> tuple[int, int]:
    """Chunk length along time and batch slice size for the chunked scan."""
    b, d, l = u.shape
    n = A.shape[1]
    if u.numel() == 0:
        return 1, 1
    # the longest chunk (a power of two, or all of l) inside which no row's cumulative log decay
    # sum |delta * A| exceeds SAFE_LOG (per-step values clamped as in _chunk_states)
    with torch.no_grad():
        steps = (delta.abs() * A.abs().amax(dim=1)[:, None]).clamp_(max=SAFE_LOG)  # b x d x l
        cum = F.pad(steps.double().cumsum(-1), (1, 0))  # b x d x (l + 1), cum[..., t] = sum of steps before t
        lc = 1
        for cand in [min(l, MAX_CHUNK_LEN)] + [2 ** k for k in range(7, 0, -1)]:
            if cand > min(l, MAX_CHUNK_LEN):
                continue
            starts = torch.arange(0, l, cand, device=u.device)
            ends = (starts + cand).clamp(max=l)
            if float((cum[..., ends] - cum[..., starts]).amax()) <= SAFE_LOG:
                lc = cand
                break
    bs = max(1, min(b, MAX_CHUNK_ELEMENTS // max(1, d * n * lc)))
    return lc, bs


class _ChunkedScan(torch.autograd.Function):
    """Chunked closed-form scan with a recomputing backward.

    Shapes inside: u, delta b x g x dg x l (dg = d / g); A g x dg x n; B, C b x g x n x l;
    per-chunk tensors bs x g x lc x dg x n (time before channels, so the contractions with
    B and C over n are batched matrix-vector products, no copies).
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor):  # noqa: D401
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        dg = d // g
        lc, bs = _plan(u, delta, A, g)
        ut = u.view(b, g, dg, l).transpose(-1, -2)  # b x g x l x dg (view)
        dt = delta.view(b, g, dg, l).transpose(-1, -2)  # b x g x l x dg (view)
        A3 = A.view(g, dg, n)
        Bt = B.transpose(-1, -2)  # b x g x l x n (view)
        Ct = C.transpose(-1, -2)  # b x g x l x n (view)
        n_chunks = math.ceil(l / lc)
        y = u.new_empty(b, g, l, dg)
        last = u.new_empty(b, g, dg, n)
        # the state at the start of every chunk after the first (the first is h0): for backward
        starts = u.new_empty(n_chunks - 1, b, g, dg, n) if n_chunks > 1 else u.new_empty(0)
        with torch.no_grad():
            for b0 in range(0, b, bs):
                b1 = min(b, b0 + bs)
                h = h0[b0:b1].view(b1 - b0, g, dg, n)
                for k, t0 in enumerate(range(0, l, lc)):
                    t1 = min(l, t0 + lc)
                    if k > 0:
                        starts[k - 1, b0:b1] = h
                    hs, _, _ = _chunk_states(ut[b0:b1, :, t0:t1], dt[b0:b1, :, t0:t1], A3, Bt[b0:b1, :, t0:t1], h)
                    torch.matmul(hs, Ct[b0:b1, :, t0:t1, :, None], out=y[b0:b1, :, t0:t1, :, None])
                    h = hs[:, :, -1]
                last[b0:b1] = h
        ctx.save_for_backward(u, delta, A, B, C, h0, starts)
        ctx.plan = (lc, bs)
        return y.transpose(-1, -2).reshape(b, d, l), last.view(b, d, n)

    @staticmethod
    def backward(ctx, gy: Tensor, glast: Tensor):
        u, delta, A, B, C, h0, starts = ctx.saved_tensors
        lc, bs = ctx.plan
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        dg = d // g
        ut = u.view(b, g, dg, l).transpose(-1, -2)  # b x g x l x dg
        dt = delta.view(b, g, dg, l).transpose(-1, -2)
        A3 = A.view(g, dg, n)
        Bt = B.transpose(-1, -2)  # b x g x l x n
        Ct = C.transpose(-1, -2)
        if gy is None:
            gy = u.new_zeros(b, d, l)
        gyt = gy.reshape(b, g, dg, l).transpose(-1, -2)  # b x g x l x dg
        g_u = u.new_empty(b, g, l, dg)
        g_delta = u.new_empty(b, g, l, dg)
        g_A = torch.zeros_like(A3)
        g_B = u.new_empty(b, g, l, n)
        g_C = u.new_empty(b, g, l, n)
        g_h0 = u.new_empty(b, g, dg, n)
        chunk_starts = list(range(0, l, lc))
        for b0 in range(0, b, bs):
            b1 = min(b, b0 + bs)
            # adjoint of the state after the chunk: the gradient reaching h_{t1 - 1} from later on
            carry = (glast[b0:b1].view(b1 - b0, g, dg, n) if glast is not None
                     else u.new_zeros(b1 - b0, g, dg, n))
            for k in reversed(range(len(chunk_starts))):
                t0 = chunk_starts[k]
                t1 = min(l, t0 + lc)
                h_start = h0[b0:b1].view(b1 - b0, g, dg, n) if k == 0 else starts[k - 1, b0:b1]
                uc, dc = ut[b0:b1, :, t0:t1], dt[b0:b1, :, t0:t1]  # bs x g x lc x dg
                Bc, Cc = Bt[b0:b1, :, t0:t1], Ct[b0:b1, :, t0:t1]  # bs x g x lc x n
                gyc = gyt[b0:b1, :, t0:t1]  # bs x g x lc x dg
                hs, x, E = _chunk_states(uc, dc, A3, Bc, h_start)  # bs x g x lc x dg x n each
                # adjoint recurrence gh_t = C_t gy_t + a_{t+1} gh_{t+1}, solved backwards in closed form:
                # gh_t = e^{-c_t} (sum_{s>=t} e^{c_s} C_s gy_s + e^{c_last} carry)
                w = gyc[..., None] * Cc[:, :, :, None, :]  # bs x g x lc x dg x n
                w.mul_(E)
                gh = w.flip(2).cumsum(2).flip(2)
                gh.add_(E[:, :, -1:] * carry[:, :, None]).div_(E)
                g_C[b0:b1, :, t0:t1] = torch.matmul(gyc[..., None, :], hs).squeeze(-2)  # bs x g x lc x n
                du = dc * uc  # bs x g x lc x dg
                g_B[b0:b1, :, t0:t1] = torch.matmul(du[..., None, :], gh).squeeze(-2)
                g_du = torch.matmul(gh, Bc[..., None]).squeeze(-1)  # bs x g x lc x dg
                # d h_t / d(delta_t A) = a_t h_{t-1} = h_t - x_t
                g_dA = hs.sub_(x).mul_(gh)  # bs x g x lc x dg x n
                carry = gh[:, :, 0] * torch.exp(dc[:, :, 0, :, None] * A3)  # adjoint of h_start
                g_delta[b0:b1, :, t0:t1] = (g_dA * A3[:, None]).sum(-1) + g_du * uc
                g_u[b0:b1, :, t0:t1] = g_du * dc
                g_A += (g_dA.mul_(dc[..., None])).sum((0, 2))
            g_h0[b0:b1] = carry
        return (
            g_u.transpose(-1, -2).reshape(b, d, l),
            g_delta.transpose(-1, -2).reshape(b, d, l),
            g_A.view(d, n),
            g_B.transpose(-1, -2),
            g_C.transpose(-1, -2),
            g_h0.view(b, d, n),
        )


def _chunk_states(u: Tensor, delta: Tensor, A: Tensor, Bt: Tensor, h_start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """States of one chunk in closed form.

    u, delta: bs x g x lc x dg; A: g x dg x n; Bt: bs x g x lc x n; h_start: bs x g x dg x n.
    Returns (h, x, E), each bs x g x lc x dg x n: the states
    h_t = e^{c_t} (h_start + sum_{s<=t} e^{-c_s} x_s), the inputs x_t = delta_t u_t B_t and
    E = e^{c}, with c_t = sum_{s<=t} delta_s A the cumulative log decay (|c| <= SAFE_LOG).
    """
    # one-step decays below e^-SAFE_LOG (~1e-26) are clamped there: a state that decays faster is
    # zero to float precision either way, and the division by E below stays finite
    E = (delta[..., None] * A[None, :, None]).clamp_(min=-SAFE_LOG).cumsum_(2).exp_()  # bs x g x lc x dg x n
    x = (delta * u)[..., None] * Bt[:, :, :, None, :]  # bs x g x lc x dg x n
    h = (x / E).cumsum_(2)
    h.add_(h_start[:, :, None]).mul_(E)
    return h, x, E
