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
* ``CHUNKED``: vectorised pure PyTorch, the fallback on CPU. Time is cut into chunks; inside a
  chunk the recurrence is solved in closed form, ``h_t = E_t sum_{s<=t} x_s / E_s`` with
  ``E_t = exp(A (k_t - m))``: since A does not depend on time, the cumulative log decay is A times
  a cumulative sum of delta taken on the small b x d x l tensor. Each chunk's exponents are
  centred on their range and the chunk length is chosen (one host sync) so that they stay within
  ``+-SAFE_LOG``; each chunk's first step is applied explicitly, so a single huge step (a decay
  that underflows to 0) only shortens the chunks, whatever the sequence length. It is a custom
  autograd function: the forward keeps the chunks' decays and scaled states for the backward
  (or, for very long inputs, only the state at each chunk start, and the backward recomputes),
  and the backward solves the adjoint recurrence in the same closed form. Full-size temporaries
  (b_slice x d x n x l_chunk, at most ``MAX_CHUNK_ELEMENTS``) come from a small scratch pool, as
  fresh multi-megabyte allocations cost more than the arithmetic on a small CPU.
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
import threading
from enum import Enum
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from vimcan_core.errors import InputShapeError, VimcanError
from vimcan_core.model import scan_cpu

log = logging.getLogger(__name__)

#: largest |log decay| allowed in one exponential of the chunked scan (e^60 ~ 1e26, far from float32
#: overflow); a chunk's cumulative log decays are centred on their range, so a chunk spans up to 2 * SAFE_LOG
SAFE_LOG = 60.0
#: longest chunk along time (longer chunks: fewer Python iterations, larger temporaries)
MAX_CHUNK_LEN = 128
#: cap on the elements of one b_slice x d x n x l_chunk temporary (512k floats = 2 MB): the five or so
#: live at once stay in a share of the CPU's cache (measured at 1 thread, b=4 d=256 n=16 l=81, fwd+bwd:
#: 21 ms with 2 MB slices against 28-30 ms with one 5 MB piece)
MAX_CHUNK_ELEMENTS = 1 << 19
#: the chunked forward keeps its decays and scaled states (2 x b x d x n x l) for the backward up to this many
#: elements each (64 MB in float32); beyond, it keeps the chunk-start states and the backward recomputes
MAX_SAVED_ELEMENTS = 1 << 24
_LOG2_E = 1.4426950408889634


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
        use_kernel = scan_cpu.kernel_supports(device, dtype, d_state)
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
    Bg = B if B.dim() == 4 else B.unsqueeze(1)  # b x g x n x l
    Cg = C if C.dim() == 4 else C.unsqueeze(1)  # b x g x n x l
    if chosen is ScanBackend.CPU_KERNEL:  # bias and softplus inside the kernel; no zero state or unused last state materialised
        y, last = scan_cpu.KernelScan.apply(u, delta, A, Bg, Cg, initial_state, return_last_state, delta_bias,
                                            delta_softplus)
        return _finish(y, last, u, D, z, return_last_state)
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    if chosen is ScanBackend.REFERENCE:
        y, last = _scan_reference(u, delta, A, B, C, initial_state)
    else:
        if u.dtype == torch.float16:
            # float16 cannot hold the factorised decays (its range ends at 6.5e4): scan in float32
            args = (t.float() if t is not None else None for t in (u, delta, A, Bg, Cg, initial_state))
            y, last = (t.to(torch.float16) for t in _ChunkedScan.apply(*args))
        else:
            y, last = _ChunkedScan.apply(u, delta, A, Bg, Cg, initial_state)
    return _finish(y, last, u, D, z, return_last_state)


def _finish(y: Tensor, last: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None,
            return_last_state: bool) -> Tensor | tuple[Tensor, Tensor]:
    """The skip term D u and the gate SiLU(z) on the scan's output."""
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


def _plan(delta: Tensor, A: Tensor) -> tuple[int, int, bool]:
    """Chunk length along time, batch slice size, and whether every delta is >= 0.

    A chunk [t0, t1) applies its first step explicitly, so only the steps t0 + 1 .. t1 - 1 enter
    its exponentials: the chunk is safe when, for every row (batch, channel),
    ``max_n |A[d, n]| * sum_{t0 < t <= t1 - 1} |delta_t| <= 2 * SAFE_LOG`` (the log decays are
    centred on the middle of their range, so both e^{+-P} stay below e^SAFE_LOG). Chunk length 1
    is always safe (no exponential but the explicit step's, which may underflow to 0 harmlessly).
    One host sync in all.
    """
    b, d, l = delta.shape
    n = A.shape[1]
    if delta.numel() == 0 or n == 0:
        return max(l, 1), max(b, 1), True
    with torch.no_grad():
        rate = A.abs().amax(dim=1)  # d: the fastest |log decay| per unit of delta in each channel
        steps = delta.abs().mul_(rate[:, None])  # b x d x l, bound on each step's |log decay|
        t_cap = min(l, MAX_CHUNK_LEN)
        lowest = delta.amin()
        if t_cap == l:  # the common case: does the whole sequence fit one chunk?
            worst = steps[..., 1:].sum(-1).amax() if l > 1 else steps.new_zeros(())
            worst_f, lowest_f = torch.stack((worst.to(lowest.dtype), lowest)).tolist()
            if worst_f <= 2 * SAFE_LOG:
                return l, _batch_slice(b, d * n * l), lowest_f >= 0
        # candidate lengths, longest first, shrinking by ~15 %; each checked on every aligned chunk
        cands, t = [], t_cap
        while t > 1:
            cands.append(t)
            t = min(t - 1, int(t * 0.85))
        cum = steps.double().cumsum(-1)  # b x d x l: cum[..., t] = sum of steps up to t
        worst = []
        for t in cands:
            first = torch.arange(0, l, t, device=delta.device)
            final = (first + (t - 1)).clamp_(max=l - 1)
            worst.append((cum[..., final] - cum[..., first]).amax())
        flags = torch.stack(worst + [lowest.double()]).tolist()
        lc = next((t for t, w in zip(cands, flags[:-1]) if w <= 2 * SAFE_LOG), 1)
        return lc, _batch_slice(b, d * n * lc), flags[-1] >= 0


def _batch_slice(b: int, per_sequence: int) -> int:
    """Batch slice size: as few slices as ``MAX_CHUNK_ELEMENTS`` allows, of near-equal sizes (one
    sequence per slice when a single sequence's chunk already exceeds it: the chunk length is
    bounded by ``MAX_CHUNK_LEN`` alone)."""
    most = max(1, min(b, MAX_CHUNK_ELEMENTS // max(1, per_sequence)))
    n_slices = -(-b // most)
    return -(-b // n_slices)


class _Scratch:
    """Reusable flat buffers for the chunked scan's full-size temporaries (thread-safe).

    A fresh multi-megabyte tensor costs a page fault per 4 kB page on its first write, which on a
    small CPU is several times the arithmetic of one pass over it; the chunked scan therefore takes
    its temporaries from here and gives them back when done. At most ``max_bytes`` of idle buffers
    are kept (the largest are dropped first); ``clear()`` frees them all.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._free: list[Tensor] = []  # flat, contiguous, idle

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device."""
        numel = 1
        for s in shape:
            numel *= s
        best = None
        with self._lock:
            for i, buf in enumerate(self._free):
                if (buf.numel() >= numel and buf.dtype == like.dtype and buf.device == like.device
                        and (best is None or buf.numel() < self._free[best].numel())):
                    best = i
            flat = self._free.pop(best) if best is not None else None
        if flat is None:
            flat = torch.empty(numel, dtype=like.dtype, device=like.device)
        return flat[:numel].view(shape)

    def give(self, *tensors: Tensor) -> None:
        """Hand back tensors from ``take`` (or any contiguous temporary nobody else references)."""
        with self._lock:
            for t in tensors:
                base = t._base if t._base is not None else t
                if base.is_contiguous() and base.numel() > 0:
                    self._free.append(base.view(-1))
            self._free.sort(key=Tensor.numel)
            total = sum(b.numel() * b.element_size() for b in self._free)
            while self._free and total > self.max_bytes:
                total -= self._free[-1].numel() * self._free[-1].element_size()
                self._free.pop()

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


#: idle-buffer cap of the chunked scan's scratch pool (``_SCRATCH.clear()`` frees it)
SCRATCH_MAX_BYTES = 256 << 20
_SCRATCH = _Scratch(SCRATCH_MAX_BYTES)


class _Keep(Enum):
    """What the chunked forward keeps for the backward."""

    NOTHING = "nothing"  # no gradient wanted
    STATES = "states"  # E and S of every chunk: no recomputation
    STARTS = "starts"  # the state entering every chunk: the backward recomputes E and S


def _forward_chunks(d5: Tensor, du5: Tensor, A5: Tensor, B5: Tensor, C5: Tensor, h05: Tensor | None,
                    plan: tuple[int, int, bool], keep: _Keep, want_y: bool = True
                    ) -> tuple[Tensor | None, Tensor, list[Tensor]]:
    """Run the chunks forward. Shapes as in ``_ChunkedScan``; returns y (b x g x dg x l, or None
    without ``want_y``), the last state b x g x dg x n and what ``keep`` asks for: STATES:
    E and S of every (batch slice, chunk) (see ``_chunk_states``), scratch buffers the caller
    must give back; STARTS: the state entering every chunk (an empty tensor for a zero state)."""
    lc, bs, nonneg = plan
    b, g, dg, _, l = d5.shape
    n = A5.shape[2]
    single = bs == b and lc == l
    y = None if (single or not want_y) else d5.new_empty(b, g, dg, l)
    last = d5.new_empty(b, g, dg, n)
    kept: list[Tensor] = []
    for b0 in range(0, b, bs):
        b1 = min(b, b0 + bs)
        h = h05[b0:b1] if h05 is not None else None
        for t0 in range(0, l, lc):
            t1 = min(l, t0 + lc)
            sl = (slice(b0, b1), Ellipsis, slice(t0, t1))
            if keep is _Keep.STARTS:
                kept.append(h.contiguous() if h is not None else d5.new_zeros(0))
            E, S = _chunk_states(d5[sl], du5[sl], A5, B5[sl], h, nonneg)
            h = E[..., -1] * S[..., -1]  # the state leaving the chunk, bs x g x dg x n
            if want_y:  # y_t = sum_n C_t h_t with h = E S
                H = torch.mul(E, S, out=_SCRATCH.take(E.shape, E)).mul_(C5[sl])  # bs x g x dg x n x lc
                yc = H.sum(3)  # bs x g x dg x lc
                _SCRATCH.give(H)
                if single:
                    y = yc
                else:
                    y[sl] = yc
            if keep is _Keep.STATES:
                kept += [E, S]
            else:
                _SCRATCH.give(E, S)
        last[b0:b1] = h if h is not None else 0.0  # (None: l = 0 and no initial state)
    return y, last, kept


class _ChunkedScan(torch.autograd.Function):
    """Chunked closed-form scan.

    Layout inside: every full-size temporary is ``bs x g x dg x n x lc`` (dg = d / g, time last,
    so the cumulative sums run along the contiguous axis); u, delta are viewed as
    ``b x g x dg x 1 x l``, B, C as ``b x g x 1 x n x l`` and A as ``g x dg x n x 1``, so every
    outer product is one broadcast multiply.

    Inside a chunk [t0, t1) the first step is applied explicitly (``h_t0 = a_t0 h_prev + x_t0``)
    and the rest in closed form with the factorised log decays ``P_t = A (k_t - m)``, where
    ``k_t = sum_{t0 < s <= t} delta_s`` (a cumulative sum over the small b x d x l tensor) and m
    centres k on its range: ``E = e^P``, ``h_t = E_t sum_{t0 <= s <= t} x_s / E_s`` (with
    ``x_t0`` standing for ``h_t0``): ``h_t = E_t S_t``. The forward keeps E and S for the
    backward when they hold at most ``MAX_SAVED_ELEMENTS`` elements; otherwise it keeps only the
    state at each chunk start and the backward recomputes the chunk. The backward solves the
    adjoint recurrence ``gh_t = C_t gy_t + a_{t+1} gh_{t+1}`` in the same closed form,
    ``gh_t = G_t / E_t`` with ``G_t = sum_{s >= t} E_s C_s gy_s (+ E_last carry)``, and the
    gradient of each step's log decay, ``gh_t a_t h_{t-1}``, is ``G_t S_{t-1}`` inside the chunk
    (a product, free of the cancellation in ``gh_t (h_t - x_t)`` when the decay is strong).
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None):  # noqa: D401
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        dg = d // g
        plan = _plan(delta, A)
        if not any(ctx.needs_input_grad):
            keep = _Keep.NOTHING
        else:
            keep = _Keep.STATES if b * d * n * l <= MAX_SAVED_ELEMENTS else _Keep.STARTS
        y, last, kept = _forward_chunks(
            delta.view(b, g, dg, 1, l), (delta * u).view(b, g, dg, 1, l), A.view(g, dg, n, 1),
            B.view(b, g, 1, n, l), C.view(b, g, 1, n, l), h0.view(b, g, dg, n) if h0 is not None else None,
            plan, keep,
        )
        if keep is _Keep.STATES:  # scratch buffers: on ctx, handed back to the pool by the backward
            ctx.save_for_backward(u, delta, A, B, C, h0)
            ctx.kept = kept
        else:
            ctx.save_for_backward(u, delta, A, B, C, h0, *kept)
            ctx.kept = None
        ctx.plan = plan
        return y.view(b, d, l), last.view(b, d, n)

    @staticmethod
    def backward(ctx, gy: Tensor | None, glast: Tensor | None):
        u, delta, A, B, C, h0, *starts = ctx.saved_tensors
        lc, bs, nonneg = plan = ctx.plan
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        dg = d // g
        u5 = u.view(b, g, dg, 1, l)
        d5 = delta.view(b, g, dg, 1, l)
        du5 = (delta * u).view(b, g, dg, 1, l)
        A5 = A.view(g, dg, n, 1)
        A4 = A.view(g, dg, 1, n)
        B5 = B.view(b, g, 1, n, l)
        C5 = C.view(b, g, 1, n, l)
        h05 = h0.view(b, g, dg, n) if h0 is not None else None
        kept, ctx.kept = ctx.kept, None  # a second backward (retain_graph) recomputes
        if kept is None and not starts:
            _, _, starts = _forward_chunks(d5, du5, A5, B5, C5, h05, plan, _Keep.STARTS, want_y=False)
        gy5 = gy.reshape(b, g, dg, 1, l) if gy is not None else u.new_zeros(b, g, dg, 1, l)
        single = bs == b and lc == l  # one piece: its gradients are the gradients
        if not single:
            g_u = u.new_empty(b, g, dg, l)
            g_delta = u.new_empty(b, g, dg, l)
            g_B = u.new_empty(b, g, n, l)
            g_C = u.new_empty(b, g, n, l)
        g_A = A.new_zeros(g, dg, n)
        g_h0 = u.new_empty(b, g, dg, n) if h0 is not None else None
        chunk_starts = list(range(0, l, lc))
        n_chunks = len(chunk_starts)
        for i_slice, b0 in enumerate(range(0, b, bs)):
            b1 = min(b, b0 + bs)
            # adjoint of the state leaving the chunk (the gradient reaching h_{t1 - 1} from later on)
            carry = glast[b0:b1].view(b1 - b0, g, dg, n) if glast is not None else None
            for k in reversed(range(n_chunks)):
                t0 = chunk_starts[k]
                t1 = min(l, t0 + lc)
                sl = (slice(b0, b1), Ellipsis, slice(t0, t1))
                dc, duc, uc, gyc = d5[sl], du5[sl], u5[sl], gy5[sl]  # bs x g x dg x 1 x lc
                Bc, Cc = B5[sl], C5[sl]  # bs x g x 1 x n x lc
                idx = i_slice * n_chunks + k
                if kept is not None:
                    E, S = kept[2 * idx], kept[2 * idx + 1]
                    if k == 0:
                        h_prev = h05[b0:b1] if h05 is not None else None
                    else:  # the previous chunk's last state
                        h_prev = kept[2 * idx - 2][..., -1] * kept[2 * idx - 1][..., -1]
                else:
                    h_prev = starts[idx] if starts[idx].numel() else None
                    E, S = _chunk_states(dc, duc, A5, Bc, h_prev, nonneg)
                # G_t = sum_{s >= t} E_s C_s gy_s + E_last carry   (bs x g x dg x n x lc)
                V = torch.mul(Cc, gyc, out=_SCRATCH.take(E.shape, E)).mul_(E)
                if carry is not None:
                    V[..., -1].addcmul_(E[..., -1], carry)
                R = V.flip(-1).cumsum_(-1)  # G, time reversed
                G = R.flip(-1)
                # gradient of each step's log decay delta_t A: gh_t a_t h_{t-1}, which inside the
                # chunk is G_t S_{t-1} (no cancellation); for the chunk's first step a_t0 gh_t0 h_prev
                M = R
                torch.mul(G[..., 1:], S[..., :-1], out=M[..., 1:])
                gh = G.div_(E)  # the adjoint states
                if k > 0 or g_h0 is not None:  # adjoint of the state entering the chunk: a_t0 gh_t0
                    carry = torch.exp(dc[..., 0] * A5[..., 0]).mul_(gh[..., 0])  # bs x g x dg x n
                if h_prev is None:
                    M[..., 0].zero_()
                else:
                    torch.mul(carry, h_prev, out=M[..., 0])
                gB_c = torch.mul(gh, duc, out=V).sum(2)  # bs x g x n x lc
                g_du = torch.mul(gh, Bc, out=V).sum(3)  # bs x g x dg x lc
                gC_c = torch.mul(E, S, out=V).mul_(gyc).sum(2)  # bs x g x n x lc
                gd_c = torch.matmul(A4, M).squeeze(3).addcmul_(g_du, uc.squeeze(3))  # bs x g x dg x lc
                gu_c = g_du.mul_(dc.squeeze(3))
                g_A += M.mul_(dc).sum((0, 4))
                if single:
                    g_B, g_C, g_delta, g_u = gB_c, gC_c, gd_c, gu_c
                else:
                    g_B[sl], g_C[sl], g_delta[sl], g_u[sl] = gB_c, gC_c, gd_c, gu_c
                _SCRATCH.give(E, S, V)  # not R, gh: torch.flip allocated them, and a freed
                # allocation is reused by the next flip, while a pooled one would force a fresh one
            if g_h0 is not None:
                g_h0[b0:b1] = carry if carry is not None else 0.0
        return (
            g_u.view(b, d, l),
            g_delta.view(b, d, l),
            g_A.view(d, n),
            g_B,
            g_C,
            g_h0.view(b, d, n) if g_h0 is not None else None,
        )


def _chunk_states(delta: Tensor, du: Tensor, A: Tensor, B: Tensor, h_prev: Tensor | None,
                  nonneg: bool) -> tuple[Tensor, Tensor]:
    """Decays and scaled states of one chunk [t0, t1) in closed form.

    delta, du (= delta * u): bs x g x dg x 1 x lc; A: g x dg x n x 1; B: bs x g x 1 x n x lc;
    h_prev (the state before the chunk, None for zero): bs x g x dg x n.
    Returns (E, S), each bs x g x dg x n x lc, scratch buffers the caller gives back:
    ``E_t = exp(A (k_t - m))`` with ``k_t = sum_{t0 < s <= t} delta_s`` and m the middle of k's
    range (so |A (k - m)| <= SAFE_LOG when ``_plan`` chose the chunk), and
    ``S_t = sum_{t0 <= s <= t} x_s / E_s`` with ``x_t0 = a_t0 h_prev + delta_t0 u_t0 B_t0`` (the
    first step applied explicitly), so that the states are ``h_t = E_t S_t``.
    """
    k = delta.cumsum(-1)  # bs x g x dg x 1 x lc; differs from k_t by delta_t0, which m absorbs
    if nonneg:
        mid = (k[..., :1] + k[..., -1:]).mul_(0.5)
    else:
        mid = (k.amax(-1, keepdim=True) + k.amin(-1, keepdim=True)).mul_(0.5)
    shape = (*delta.shape[:3], A.shape[2], delta.shape[4])  # bs x g x dg x n x lc
    # exp2 of the exponent in bits (log2(e) folded into the small tensor): half the cost of exp
    E = torch.mul(k.sub_(mid).mul_(_LOG2_E), A, out=_SCRATCH.take(shape, delta)).exp2_()
    W = torch.mul(B, du, out=_SCRATCH.take(shape, delta)).div_(E)  # x_t / E_t
    if h_prev is not None:  # the chunk's first step applied explicitly: x_t0 += a_t0 h_prev
        W[..., 0].addcdiv_(torch.exp(delta[..., 0] * A[..., 0]).mul_(h_prev), E[..., 0])
    return E, W.cumsum_(-1)
