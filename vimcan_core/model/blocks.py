"""Building blocks of VIMCAN: the BiSTSSM block, the STMamba layer, embeddings and fusion.

Token tensors follow one axis order: batch, time, joint (or part / sensor), channel
(``B x T x J x C``). A block that mixes along one axis receives a batch of sequences
``Ns x L x C`` where the other axes were folded into ``Ns`` (joints into the batch for the
temporal scans, frames into the batch for the spatial scans), so nothing loops over time or
joints in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from vimcan_core.errors import VimcanError
from vimcan_core.model import linear_cpu, scan_cpu
from vimcan_core.model.config import VimcanConfig
from vimcan_core.model.scan import ScanBackend, selective_scan


@dataclass(frozen=True)
class SSMState:
    """The carried state of one causal mixer: the last ``d_conv - 1`` conv inputs and the SSM state."""

    conv: Tensor  # Ns x Di x (d_conv - 1)
    ssm: Tensor  # Ns x N x Di (state-major, as the inference kernel keeps it)


@dataclass(frozen=True)
class _InferenceWeights:
    """An ``SSMMixer``'s parameters as its inference-only path takes them (derived, never trained;
    rebuilt whenever a parameter changes). k directions, Di channels, N states, R = dt rank, K = d_conv."""

    conv_weight: Tensor  # k x K x Di: conv_weight tap-major
    conv_bias: Tensor  # kDi
    x_proj_t: Tensor  # k x Di x (R + 2N): x_proj_weight transposed
    dt_proj_t: Tensor  # k x R x Di: dt_proj_weight transposed
    dt_bias: Tensor  # kDi
    A_t: Tensor  # k x N x Di, = -exp(A_log) transposed (state-major)
    D: Tensor  # kDi
    in_proj: Tensor  # 2Di x C, in_proj's weight (shared storage, not a copy)
    out_proj: Tensor  # C x Di, out_proj's weight (shared storage)


def _param_key(params: tuple[Tensor, ...]) -> tuple | None:
    """What identifies these parameters' current values: storage and version (an optimizer step or
    ``load_state_dict`` bumps the version, ``.to()`` gives new storage). None for inference tensors
    (a model built under ``torch.inference_mode``), which keep no version: nothing to cache on."""
    try:
        return tuple([(p.data_ptr(), p._version) for p in params])
    except RuntimeError:
        return None


@lru_cache(maxsize=64)
def _sequence_offsets(rows: int, length: int, segments: tuple[int, ...] | None,
                      order: tuple[int, ...] | None = None) -> scan_cpu.Sequences:
    """The sequences in ``rows`` x ``length`` tokens: each row's tokens taken in ``order`` (None:
    as they are) and cut into ``segments`` (None: one sequence); see ``scan_cpu.sequence_offsets``.
    Cached: built once per shape."""
    tokens = None if order is None else [r * length + j for r in range(rows) for j in order]
    return scan_cpu.sequence_offsets((segments or (length,)) * rows, tokens)


class SSMMixer(nn.Module):
    """The Mamba mixer, in one or two directions (Vim-style: a separate conv, x/dt projections,
    A and D per direction; in/out projections shared; the two directions summed before the gate).

    in_proj -> (x, z); x: causal depthwise conv + SiLU -> selective scan -> (sum of directions)
    * SiLU(z) -> out_proj. Input and output Ns x L x C.

    ``forward`` (training, offline inference) and ``step_ref`` are the readable reference paths.
    Without autograd on the CPU, ``infer`` and ``step`` take an inference-only path with the same
    result: channel-last tensors, derived weights cached (``_InferenceWeights``), the conv + SiLU of
    both directions in one C call (``scan_cpu.conv_silu``, no flip / cat / conv1d) and everything
    from dt_proj to the gate in another (``scan_cpu.gated_scan``), which is what makes a 17-token
    frame cheap. Set ``fast_inference = False`` to always use the reference paths.
    """

    #: take the inference-only path when it can run (no autograd, CPU, kernel built)
    fast_inference: bool = True

    def __init__(self, dim: int, config: VimcanConfig, bidirectional: bool) -> None:
        super().__init__()
        self.dim = dim
        self.d_inner = config.expand * dim
        self.d_state = config.d_state
        self.d_conv = config.d_conv
        self.dt_rank = math.ceil(dim / 16)
        self.num_dirs = 2 if bidirectional else 1
        self.scan_backend = ScanBackend.AUTO
        k, di, n, r = self.num_dirs, self.d_inner, self.d_state, self.dt_rank
        self.in_proj = nn.Linear(dim, 2 * di, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(k * di, 1, self.d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(k * di))
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, di))
        self.dt_proj_weight = nn.Parameter(torch.empty(k, di, r))
        self.dt_bias = nn.Parameter(torch.empty(k * di))
        self.A_log = nn.Parameter(torch.empty(k * di, n))
        self.D = nn.Parameter(torch.ones(k * di))
        self.out_proj = nn.Linear(di, dim, bias=False)
        self._init_mamba(config)
        self._inference_cache: tuple[tuple | None, _InferenceWeights] | None = None

    @torch.no_grad()
    def _init_mamba(self, config: VimcanConfig) -> None:
        """Mamba's initialisation: A = -exp(A_log), A_log = log(1..N); dt log-uniform in
        [dt_min, dt_max] stored as the inverse softplus in the dt bias; D = 1."""
        di, n = self.d_inner, self.d_state
        fan_conv = self.d_conv  # nn.Conv1d default: kaiming-uniform over the kernel
        bound = 1.0 / math.sqrt(fan_conv)
        self.conv_weight.uniform_(-bound, bound)
        self.conv_bias.uniform_(-bound, bound)
        nn.init.uniform_(self.x_proj_weight, -1.0 / math.sqrt(di), 1.0 / math.sqrt(di))
        dt_std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj_weight, -dt_std, dt_std)
        dt = torch.exp(
            torch.rand(self.num_dirs * di) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min)
        ).clamp(min=config.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(self.num_dirs * di, 1))
        self.D.fill_(1.0)
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]

    def forward(self, x: Tensor) -> Tensor:
        Ns, L, C = x.shape
        k, di, n, r = self.num_dirs, self.d_inner, self.d_state, self.dt_rank
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # Ns x L x Di each
        xs = xs.transpose(1, 2)  # Ns x Di x L
        if k == 2:
            xs = torch.cat((xs, xs.flip(-1)), dim=1)  # Ns x 2Di x L (second half runs backwards)
        xs = scan_cpu.causal_conv1d_silu(xs, self.conv_weight, self.conv_bias)  # causal depthwise conv + SiLU, Ns x kDi x L
        proj = torch.einsum("kod,nkdl->nkol", self.x_proj_weight, xs.view(Ns, k, di, L))  # Ns x k x (R+2N) x L
        dt, Bm, Cm = proj.split((r, n, n), dim=2)  # Ns x k x R x L, Ns x k x N x L, Ns x k x N x L
        delta = torch.einsum("kdr,nkrl->nkdl", self.dt_proj_weight, dt).reshape(Ns, k * di, L)  # Ns x kDi x L
        y = selective_scan(
            xs, delta, -torch.exp(self.A_log), Bm.contiguous(), Cm.contiguous(), self.D,
            delta_bias=self.dt_bias, delta_softplus=True, backend=self.scan_backend,
        )  # Ns x kDi x L
        if k == 2:
            y = y[:, :di] + y[:, di:].flip(-1)  # Ns x Di x L
        y = y.transpose(1, 2) * F.silu(z)  # Ns x L x Di
        return self.out_proj(y)  # Ns x L x C

    # --- inference-only path -----------------------------------------------------------------
    def _fast_path_ok(self, x: Tensor) -> bool:
        """True when ``infer`` / ``step`` can take the inference-only kernel path for ``x``."""
        return (self.fast_inference and not torch.is_grad_enabled() and x.dtype == self.A_log.dtype
                and scan_cpu.kernel_supports(x.device, x.dtype, self.d_state))

    def _inference_weights(self) -> _InferenceWeights:
        """The derived weights, rebuilt when any parameter they come from has changed: an optimizer
        step or ``load_state_dict`` bumps a parameter's version, ``.to()`` gives it new storage."""
        mods = self._modules  # dict reads throughout: nn.Module's attribute lookup is slow on a 17-token step
        params = (*self._parameters.values(), mods["in_proj"]._parameters["weight"], mods["out_proj"]._parameters["weight"])
        key = _param_key(params)
        if key is not None and self._inference_cache is not None and self._inference_cache[0] == key:
            return self._inference_cache[1]
        k, di, K = self.num_dirs, self.d_inner, self.d_conv
        with torch.no_grad():
            weights = _InferenceWeights(
                conv_weight=self.conv_weight.detach().view(k, di, K).transpose(1, 2).contiguous(),
                conv_bias=self.conv_bias.detach(),
                x_proj_t=self.x_proj_weight.detach().transpose(1, 2).contiguous(),
                dt_proj_t=self.dt_proj_weight.detach().transpose(1, 2).contiguous(),
                dt_bias=self.dt_bias.detach(),
                A_t=-torch.exp(self.A_log.detach()).view(k, di, -1).transpose(1, 2).contiguous(),
                D=self.D.detach(),
                in_proj=params[-2].detach(),
                out_proj=params[-1].detach(),
            )
        self._inference_cache = (key, weights)
        return weights

    def infer(self, x: Tensor, segments: tuple[int, ...] | None = None, order: tuple[int, ...] | None = None) -> Tensor:
        """``forward`` without autograd: Ns x L x C -> Ns x L x C, the same result (to rounding)
        through the inference-only path when it can run, else ``forward`` itself. Each row's
        tokens are scanned in ``order`` (a permutation of 0..L-1; None: as they are), cut into
        ``segments`` (lengths summing to L) scanned separately, as ``forward`` run on each piece
        of ``x[:, order]`` would; the output stays in token order."""
        if not self._fast_path_ok(x):
            xo = x if order is None else x[:, list(order)]  # Ns x L x C, in scan order
            y = torch.cat([self.forward(piece) for piece in xo.split(segments or (x.shape[1],), dim=1)], dim=1)
            return y if order is None else y[:, torch.argsort(torch.tensor(order))]
        w = self._inference_weights()
        Ns, L, C = x.shape
        k, di = self.num_dirs, self.d_inner
        offsets = _sequence_offsets(Ns, L, segments, order)  # the T = Ns L tokens as sequences
        xz = F.linear(x, w.in_proj).view(Ns * L, 2 * di)  # T x 2Di: x, then the gate z
        u, _ = scan_cpu.conv_silu(xz[:, :di], offsets, w.conv_weight, w.conv_bias, k)  # k x T x Di, in scan order
        xdbl = torch.bmm(u, w.x_proj_t)  # k x T x (R + 2N), in scan order
        y, _ = scan_cpu.gated_scan(u, xdbl, offsets, w.dt_proj_t, w.dt_bias, w.A_t, w.D, xz[:, di:])  # T x Di, token order
        return F.linear(y, w.out_proj).view(Ns, L, C)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> SSMState:
        """Zero state for ``batch`` sequences (equals the zero padding of the causal conv)."""
        if self.num_dirs != 1:
            raise VimcanError("only a causal (one-direction) mixer can be stepped; build the model with streaming=True")
        di = self.d_inner
        return SSMState(
            conv=torch.zeros(batch, di, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.d_state, di, device=device, dtype=dtype),
        )

    def step(self, x: Tensor, state: SSMState) -> tuple[Tensor, SSMState]:
        """One time step of the causal mixer: x Ns x C -> Ns x C and the new state (``step_ref``,
        through the inference-only path when it can run)."""
        if self.num_dirs != 1:
            raise VimcanError("only a causal (one-direction) mixer can be stepped; build the model with streaming=True")
        if not self._fast_path_ok(x):
            return self.step_ref(x, state)
        w = self._inference_weights()
        Ns, C = x.shape
        di = self.d_inner
        offsets = _sequence_offsets(Ns, 1, None)  # each token its own sequence, one step long
        xz = F.linear(x, w.in_proj)  # Ns x 2Di: x, then the gate z
        u, conv = scan_cpu.conv_silu(
            xz[:, :di], offsets, w.conv_weight, w.conv_bias, 1, hist=state.conv, want_hist=True)  # 1 x Ns x Di, Ns x Di x (K - 1)
        xdbl = torch.mm(u[0], w.x_proj_t[0])  # Ns x (R + 2N)
        y, h = scan_cpu.gated_scan(
            u, xdbl[None], offsets, w.dt_proj_t, w.dt_bias, w.A_t, w.D, xz[:, di:], h0=state.ssm, want_last=True,
        )  # Ns x Di, Ns x N x Di
        return F.linear(y, w.out_proj), SSMState(conv=conv, ssm=h)

    def step_ref(self, x: Tensor, state: SSMState) -> tuple[Tensor, SSMState]:
        """One time step of the causal mixer in plain PyTorch (the reference for ``step``)."""
        if self.num_dirs != 1:
            raise VimcanError("only a causal (one-direction) mixer can be stepped; build the model with streaming=True")
        n, r = self.d_state, self.dt_rank
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # Ns x Di each
        window = torch.cat((state.conv, xs[..., None]), dim=-1)  # Ns x Di x d_conv
        xs = F.silu((window * self.conv_weight[:, 0, :]).sum(-1) + self.conv_bias)  # Ns x Di
        dt, Bm, Cm = (xs @ self.x_proj_weight[0].t()).split((r, n, n), dim=-1)  # Ns x R, Ns x N, Ns x N
        delta = F.softplus(dt @ self.dt_proj_weight[0].t() + self.dt_bias)  # Ns x Di
        A_t = -torch.exp(self.A_log).t()  # N x Di
        h = torch.exp(delta[:, None, :] * A_t) * state.ssm + (delta * xs)[:, None, :] * Bm[..., None]  # Ns x N x Di
        y = (h * Cm[..., None]).sum(1) + self.D * xs  # Ns x Di
        y = y * F.silu(z)
        return self.out_proj(y), SSMState(conv=window[..., 1:], ssm=h)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, ... x C -> ... x C."""

    def __init__(self, dim: int, ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(round(dim * ratio))
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))

    def infer(self, x: Tensor) -> Tensor:
        """``forward`` as plain function calls (in eval mode dropout is the identity)."""
        if self.training:
            return self.forward(x)
        return F.linear(F.gelu(F.linear(x, self.fc1.weight, self.fc1.bias)), self.fc2.weight, self.fc2.bias)


def _layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """``norm(x)`` without the module call (the streaming step calls ~70 norms per frame)."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


#: without gradients, a block's input is processed in slices of about this many elements
INFERENCE_SLICE_ELEMENTS = 1 << 20
#: a block on at most this many tokens (a live frame: 17 per person) runs in one C call
#: (``linear_cpu.block_function``) on the CPU; above it MKL's products (multi-threaded) are faster
FUSED_MAX_TOKENS = 256


@dataclass(frozen=True)
class _PackedBlock:
    """A BiSTSSM block's weights as ``linear_cpu.block_function`` takes them (derived, never
    trained): the argument groups of the call, as pointers, and the tensors they point into."""

    tensors: tuple[Tensor, ...]  # keeps the packed and derived weights alive while the pointers are used
    head: tuple  # LayerNorm 1 (weight, bias, eps), packed in_proj, Di
    conv: tuple  # conv weight (tap-major), bias, width
    scan: tuple  # packed x_proj of each direction, dt rank, N, dt_proj_t, dt_bias, A_t, D
    tail: tuple  # packed out_proj, LayerNorm 2, packed fc1, its bias, hidden width, packed fc2, its bias
    k: int  # directions
    di: int
    n: int
    kw: int


class BiSTSSM(nn.Module):
    """The paper's BiSTSSM block (pre-norm, as Mamba/Vim blocks): x + SSM(LN(x)), then x + MLP(LN(x)).

    Input and output Ns x L x C. ``bidirectional=False`` gives the causal variant, steppable.

    Without autograd on the CPU in float32, ``infer`` and ``step`` on at most ``FUSED_MAX_TOKENS``
    tokens (a live frame) run the whole block in one C call (``linear_cpu.block_function``: weights
    packed once); set ``fused_linear = False`` for the mixer's kernels with ``F.linear`` and separate
    ops around them (the same result to rounding).
    """

    #: take the one-call block kernel for a few tokens when it can run
    fused_linear: bool = True

    def __init__(self, dim: int, config: VimcanConfig, bidirectional: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = SSMMixer(dim, config, bidirectional)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, config.mlp_ratio, config.dropout)
        self.drop = nn.Dropout(config.dropout)
        self.checkpointing = config.checkpointing
        self._packed_cache: tuple[tuple | None, _PackedBlock] | None = None
        self._block_params: tuple[nn.Parameter, ...] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        if not torch.is_grad_enabled() and x.numel() > INFERENCE_SLICE_ELEMENTS and x.shape[0] > 1:
            # inference: the sequences are independent, so run them in slices; the block's
            # intermediates (about 8 x wider than x) then never exist for the whole batch at once
            step = max(1, INFERENCE_SLICE_ELEMENTS // (x.shape[1] * x.shape[2]))
            return torch.cat([self._forward(x[i:i + step]) for i in range(0, x.shape[0], step)])
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.mixer(self.norm1(x)))  # Ns x L x C
        return x + self.mlp(self.norm2(x))

    # --- inference on a few tokens: the whole block in one kernel call -------------------------
    def _fused_ok(self, x: Tensor, tokens: int) -> bool:
        # the mixer's check covers no autograd, the CPU and a built kernel; the block kernel is float32 only
        return (self.fused_linear and not self.training and tokens <= FUSED_MAX_TOKENS and x.dtype == torch.float32
                and self.mixer._fast_path_ok(x))

    def _packed(self) -> _PackedBlock:
        """Every weight of the block as the block kernel takes it, rebuilt when a parameter changed
        (``_param_key``: storage and version of all of them)."""
        params = self._block_params
        if params is None:  # the parameter objects stay the same (load_state_dict and .to() change their data)
            params = self._block_params = tuple(self.parameters())
        key = _param_key(params)
        if key is not None and self._packed_cache is not None and self._packed_cache[0] == key:
            return self._packed_cache[1]
        mixer, mlp = self.mixer, self.mlp
        w = mixer._inference_weights()
        k, di, n, r = mixer.num_dirs, mixer.d_inner, mixer.d_state, mixer.dt_rank
        with torch.no_grad():
            w_in, w_out = linear_cpu.pack_linear(mixer.in_proj.weight), linear_cpu.pack_linear(mixer.out_proj.weight)
            fc1, fc2 = linear_cpu.pack_linear(mlp.fc1.weight, mlp.fc1.bias), linear_cpu.pack_linear(mlp.fc2.weight, mlp.fc2.bias)
            w_x = torch.cat([linear_cpu.pack_linear(mixer.x_proj_weight[d]).panels.reshape(-1) for d in range(k)])
        n1, n2 = self.norm1, self.norm2
        tensors = (w.conv_weight, w.conv_bias, w.dt_proj_t, w.dt_bias, w.A_t, w.D, w_in.panels, w_out.panels, fc1.panels,
                   fc1.bias, fc2.panels, fc2.bias, w_x, n1.weight, n1.bias, n2.weight, n2.bias)
        packed = _PackedBlock(
            tensors=tensors,
            head=(n1.weight.data_ptr(), n1.bias.data_ptr(), n1.eps, w_in.panels_ptr, di),
            conv=(w.conv_weight.data_ptr(), w.conv_bias.data_ptr(), mixer.d_conv),
            scan=(w_x.data_ptr(), r, n, w.dt_proj_t.data_ptr(), w.dt_bias.data_ptr(), w.A_t.data_ptr(), w.D.data_ptr()),
            tail=(w_out.panels_ptr, n2.weight.data_ptr(), n2.bias.data_ptr(), n2.eps, fc1.panels_ptr, fc1.bias_ptr,
                  fc1.out_features, fc2.panels_ptr, fc2.bias_ptr),
            k=k, di=di, n=n, kw=mixer.d_conv,
        )
        self._packed_cache = (key, packed)
        return packed

    def _fused(self, x: Tensor, offsets: scan_cpu.Sequences, hist: Tensor | None = None, h0: Tensor | None = None,
               want_state: bool = False) -> tuple[Tensor, SSMState | None]:
        """The whole block on x T x C (the tokens cut into ``offsets``' sequences) in one kernel call;
        ``hist`` / ``h0``: a stream's carried state (one direction), ``want_state``: return the next."""
        p = self._packed()
        T, C = x.shape
        x = x.contiguous()
        out = x.new_empty(T, C)
        s = offsets.count
        new_hist = x.new_empty(s, p.di, p.kw - 1) if want_state else None
        hlast = x.new_empty(s, p.n, p.di) if want_state else None
        order = offsets.order
        status = linear_cpu.block_function()(
            x.data_ptr(), T, C, *p.head, p.k, offsets.offsets.data_ptr(), None if order is None else order.data_ptr(), s,
            *p.conv, None if hist is None else hist.contiguous().data_ptr(), None if new_hist is None else new_hist.data_ptr(),
            *p.scan, None if h0 is None else h0.contiguous().data_ptr(), None if hlast is None else hlast.data_ptr(),
            *p.tail, out.data_ptr(), torch.get_num_threads(),
        )
        if status:
            raise MemoryError(f"the BiSTSSM block kernel could not allocate its buffers ({T} tokens x {C})")
        return out, (SSMState(conv=new_hist, ssm=hlast) if want_state else None)

    def infer(self, x: Tensor, segments: tuple[int, ...] | None = None, order: tuple[int, ...] | None = None) -> Tensor:
        """``forward`` without autograd, through the mixer's inference-only path (``SSMMixer.infer``:
        each row's tokens scanned in ``order``, as ``segments`` scanned separately)."""
        Ns, L, C = x.shape
        if self._fused_ok(x, Ns * L):
            y, _ = self._fused(x.reshape(Ns * L, C), _sequence_offsets(Ns, L, segments, order))
            return y.view(Ns, L, C)
        y = self.mixer.infer(_layer_norm(self.norm1, x), segments, order)  # Ns x L x C
        x = x + (self.drop(y) if self.training else y)
        return x + self.mlp.infer(_layer_norm(self.norm2, x))

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> SSMState:
        return self.mixer.init_state(batch, device, dtype)

    def step(self, x: Tensor, state: SSMState) -> tuple[Tensor, SSMState]:
        """x Ns x C (one time step) -> Ns x C, new state."""
        if self.mixer.num_dirs == 1 and self._fused_ok(x, x.shape[0]):
            return self._fused(x, _sequence_offsets(x.shape[0], 1, None), state.conv, state.ssm, want_state=True)
        y, state = self.mixer.step(_layer_norm(self.norm1, x), state)
        x = x + (self.drop(y) if self.training else y)
        return x + self.mlp.infer(_layer_norm(self.norm2, x)), state


class STMamba(nn.Module):
    """A spatial BiSTSSM over the tokens of each frame, then a temporal BiSTSSM over the frames
    of each token. Input and output B x T x J x C.

    ``segments`` says how the spatial scan walks the J tokens: one segment is one scanned
    sequence, e.g. ``(SKELETON_SCAN_ORDER,)`` (every parent before its children) or the five
    body parts scanned separately (part-aware). Segments of equal length are stacked into the
    batch, so the five parts cost two scans (the 5-joint torso and the four 3-joint limbs).
    Spatial scans are always bidirectional; the temporal scan is forward-only when ``causal``.
    """

    def __init__(self, dim: int, config: VimcanConfig, segments: tuple[tuple[int, ...], ...], causal: bool) -> None:
        super().__init__()
        self.spatial = BiSTSSM(dim, config, bidirectional=True)
        self.temporal = BiSTSSM(dim, config, bidirectional=not causal)
        self.causal = causal
        order = [j for seg in segments for j in seg]
        num_tokens = len(order)
        if sorted(order) != list(range(num_tokens)):
            raise VimcanError(f"STMamba segments must cover tokens 0..{num_tokens - 1} once each, got {segments}")
        self.num_tokens = num_tokens
        self.identity_order = len(segments) == 1 and order == list(range(num_tokens))
        # segments grouped by length; each group becomes one batch of sequences
        lengths = list(dict.fromkeys(len(s) for s in segments))  # distinct, in order of appearance
        self._group_lengths = tuple(lengths)
        group_order: list[int] = []
        for i, length in enumerate(lengths):
            idx = torch.tensor([s for s in segments if len(s) == length], dtype=torch.long)  # nseg x len
            self.register_buffer(f"_group{i}", idx, persistent=False)
            group_order.extend(idx.flatten().tolist())
        self.register_buffer("_inverse", torch.argsort(torch.tensor(group_order)), persistent=False)
        # inference: the segments one after the other, each scanned on its own (SSMMixer.infer)
        self._segment_lengths = tuple(len(s) for s in segments)
        self._scan_order = tuple(order)

    def spatial_mix(self, x: Tensor, inference: bool = False) -> Tensor:
        """Spatial BiSTSSM over the tokens of each frame: Nf x J x C -> Nf x J x C
        (``inference``: through ``BiSTSSM.infer``, no autograd)."""
        Nf, J, C = x.shape
        if inference:  # the kernels read the tokens in scan order themselves: no gather / scatter
            if self.identity_order:
                return self.spatial.infer(x)
            return self.spatial.infer(x, self._segment_lengths, self._scan_order)
        if self.identity_order:
            return self.spatial(x)
        outs = []
        for i, _ in enumerate(self._group_lengths):
            idx = getattr(self, f"_group{i}")  # nseg x len
            seq = x[:, idx]  # Nf x nseg x len x C
            y = self.spatial(seq.reshape(Nf * idx.shape[0], idx.shape[1], C))  # (Nf nseg) x len x C
            outs.append(y.reshape(Nf, idx.numel(), C))
        return torch.cat(outs, dim=1)[:, self._inverse]  # Nf x J x C, back in joint order

    def forward(self, x: Tensor) -> Tensor:
        B, T, J, C = x.shape
        x = self.spatial_mix(x.reshape(B * T, J, C)).view(B, T, J, C)
        xt = x.transpose(1, 2).reshape(B * J, T, C)  # (B J) x T x C
        xt = self.temporal(xt)
        return xt.view(B, J, T, C).transpose(1, 2)  # B x T x J x C

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> SSMState:
        return self.temporal.init_state(batch * self.num_tokens, device, dtype)

    def step(self, x: Tensor, state: SSMState) -> tuple[Tensor, SSMState]:
        """One frame: x B x J x C -> B x J x C, new state (causal model only)."""
        B, J, C = x.shape
        x = self.spatial_mix(x, inference=not torch.is_grad_enabled())
        y, state = self.temporal.step(x.reshape(B * J, C), state)
        return y.view(B, J, C), state


def quat_to_matrix_torch(q: Tensor) -> Tensor:
    """... x 4 quaternions (w x y z, normalised here) -> ... x 9 row-major rotation matrices.
    The matrix does not change when q changes sign, so the network sees no sign ambiguity."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        (
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ),
        dim=-1,
    )


class VisualEmbedding(nn.Module):
    """2D keypoints B x T x 17 x 3 (x, y, confidence) -> tokens B x T x 17 x De.

    Joints with confidence 0 have their (x, y) zeroed first, so a missing joint is only
    visible to the network through its confidence."""

    def __init__(self, dim: int, num_joints: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim)
        self.joint_embed = nn.Parameter(torch.zeros(num_joints, dim))
        nn.init.trunc_normal_(self.joint_embed, std=0.02)

    def forward(self, keypoints: Tensor) -> Tensor:
        conf = keypoints[..., 2:3]  # B x T x 17 x 1
        xy = torch.where(conf > 0, keypoints[..., :2], torch.zeros_like(keypoints[..., :2]))  # B x T x 17 x 2
        return self.proj(torch.cat((xy, conf), dim=-1)) + self.joint_embed  # B x T x 17 x De


class InertialEmbedding(nn.Module):
    """Bone orientations B x T x 6 x 4 (+ validity B x T x 6) -> part tokens B x T x G' x De.

    Each sensor's rotation matrix is embedded (plus a sensor embedding); a missing sensor's
    embedding is replaced by a learned "missing" token. The sensor tokens are then grouped by
    the kinematic prior into body-part tokens (the mean of the part's sensors plus a part
    embedding). ``membership`` is G' x 6 (G' = G, or 6 when G = 0: no grouping)."""

    def __init__(self, dim: int, membership: Tensor) -> None:
        super().__init__()
        num_tokens, num_sensors = membership.shape
        self.proj = nn.Linear(9, dim)
        self.sensor_embed = nn.Parameter(torch.zeros(num_sensors, dim))
        self.missing_token = nn.Parameter(torch.zeros(dim))
        self.part_embed = nn.Parameter(torch.zeros(num_tokens, dim))
        for p in (self.sensor_embed, self.missing_token, self.part_embed):
            nn.init.trunc_normal_(p, std=0.02)
        weights = membership / membership.sum(dim=1, keepdim=True)
        self.register_buffer("weights", weights, persistent=False)  # G' x 6, rows sum to 1
        self.norm = nn.LayerNorm(dim)

    def forward(self, quats: Tensor, valid: Tensor) -> Tensor:
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=quats.dtype, device=quats.device)
        q = torch.where(valid[..., None], quats, identity)  # B x T x 6 x 4 (missing: any finite value)
        tok = self.proj(quat_to_matrix_torch(q))  # B x T x 6 x De
        tok = torch.where(valid[..., None], tok, self.missing_token) + self.sensor_embed
        parts = torch.einsum("gs,btsc->btgc", self.weights, tok) + self.part_embed  # B x T x G' x De
        return self.norm(parts)


class GroupedCrossAttention(nn.Module):
    """Per-frame multi-head attention from visual joint tokens (queries) to a few key/value
    tokens, the residual added to the queries only, then an MLP (pre-norm).

    For the paper's fusion the keys/values are the inertial part tokens; ``query_groups``
    (the body part of each joint) gives each head a learned bias over (joint part, inertial
    part), initialised to ``prior`` for a joint's own part and 0 elsewhere, so a joint attends
    first to the sensors of its own part. Attention covers only the tokens of one frame: the
    cost is linear in T. With keys/values = the queries it is the vision-only self-attention
    ablation.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, num_kv: int,
                 query_groups: tuple[int, ...] | None = None, prior: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)
        if query_groups is not None:
            bias = torch.zeros(num_heads, max(query_groups) + 1, num_kv)
            for g in range(bias.shape[1]):
                bias[:, g, g] = prior
            self.group_bias = nn.Parameter(bias)  # heads x groups x Nkv
            self.register_buffer("query_groups", torch.tensor(query_groups, dtype=torch.long), persistent=False)
        else:
            self.group_bias = None

    def forward(self, xq: Tensor, xkv: Tensor | None = None) -> Tensor:
        """xq Nf x Jq x C (visual tokens of Nf frames), xkv Nf x Jk x C (None: self-attention)."""
        Nf, Jq, C = xq.shape
        h = self.num_heads
        q_in = self.norm_q(xq)
        kv_in = q_in if xkv is None else self.norm_kv(xkv)
        q = self.q_proj(q_in).view(Nf, Jq, h, C // h).transpose(1, 2)  # Nf x h x Jq x Ch
        k, v = self.kv_proj(kv_in).view(Nf, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)  # 2 x Nf x h x Jk x Ch
        mask = None if self.group_bias is None else self.group_bias[:, self.query_groups]  # h x Jq x Jk
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # Nf x h x Jq x Ch
        xq = xq + self.drop(self.out_proj(att.transpose(1, 2).reshape(Nf, Jq, C)))
        return xq + self.mlp(self.norm_mlp(xq))
