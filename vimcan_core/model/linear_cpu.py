"""Linear layers on a few rows, and whole BiSTSSM blocks, in C: the live step's products.

A streaming step multiplies a handful of rows (the 17 tokens of one frame) by every weight
matrix of the model, 73 of them in vimcan-t. MKL's sgemm is built for big matrices: on 17 rows
the 73 products of one vimcan-t step took 4.9-5.1 ms (``F.linear``, 1 thread, 2-core test
machine), two fifths of the whole step. Here the weights are packed once (``PackedLinear``:
panels of 16 output columns, K-major, so a product reads each weight once, front to back) and a
register-blocked 6 x 16 micro-kernel (AVX2 + FMA when the compiler targets them, plain loops
otherwise) accumulates in float32: the same 73 products took 2.8 ms. The epilogue adds the bias,
the exact GELU (erf form, as ``F.gelu``; erf to 1.5e-7) and a residual, and an optional LayerNorm
prologue normalises the rows first.

``vblock_f32`` (``block_function``) runs a whole BiSTSSM block with it, the conv and the gated
scan of ``scan_cpu`` in one call (``blocks.BiSTSSM``'s fused path): with ~10 PyTorch and ctypes
calls per block, a model of vimcan-t's shape but tiny widths still took 2-4 ms per step in call
overhead alone. The full vimcan-t streaming step went from 11-14 ms to 7-8 ms.

The C source is compiled into the CPU kernel library (``scan_cpu``); float32 on the CPU only.
``linear`` calls ``vlinear_f32`` from Python (tests, other uses); ``linear_ref`` is the same in PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: output columns per packed panel (two AVX2 registers of floats)
PANEL = 16

#: compiled with the kernel library after ``fast_expf`` (``scan_cpu._FAST_EXP_F32``)
LINEAR_SOURCE = r"""
#define LIN_NR 16   /* output columns per panel */
#define LIN_MR 6    /* rows per micro-kernel call */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
/* acc (LIN_MR x LIN_NR) = x (LIN_MR rows of K, stride K) times one panel (K x LIN_NR). Not inlined:
   inlined into the caller's loops its twelve accumulators were spilled in some of the versions
   the compiler made of them (2-3x slower) */
__attribute__((noinline)) static void lin_micro(const float* x, long K, const float* wp, float* acc) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K, *x3 = x + 3 * K, *x4 = x + 4 * K, *x5 = x + 5 * K;
    for (long k = 0; k < K; k++) {
        __m256 w0 = _mm256_loadu_ps(wp + k * LIN_NR), w1 = _mm256_loadu_ps(wp + k * LIN_NR + 8), a;
        a = _mm256_broadcast_ss(x0 + k); c00 = _mm256_fmadd_ps(a, w0, c00); c01 = _mm256_fmadd_ps(a, w1, c01);
        a = _mm256_broadcast_ss(x1 + k); c10 = _mm256_fmadd_ps(a, w0, c10); c11 = _mm256_fmadd_ps(a, w1, c11);
        a = _mm256_broadcast_ss(x2 + k); c20 = _mm256_fmadd_ps(a, w0, c20); c21 = _mm256_fmadd_ps(a, w1, c21);
        a = _mm256_broadcast_ss(x3 + k); c30 = _mm256_fmadd_ps(a, w0, c30); c31 = _mm256_fmadd_ps(a, w1, c31);
        a = _mm256_broadcast_ss(x4 + k); c40 = _mm256_fmadd_ps(a, w0, c40); c41 = _mm256_fmadd_ps(a, w1, c41);
        a = _mm256_broadcast_ss(x5 + k); c50 = _mm256_fmadd_ps(a, w0, c50); c51 = _mm256_fmadd_ps(a, w1, c51);
    }
    _mm256_storeu_ps(acc + 0, c00); _mm256_storeu_ps(acc + 8, c01);
    _mm256_storeu_ps(acc + 16, c10); _mm256_storeu_ps(acc + 24, c11);
    _mm256_storeu_ps(acc + 32, c20); _mm256_storeu_ps(acc + 40, c21);
    _mm256_storeu_ps(acc + 48, c30); _mm256_storeu_ps(acc + 56, c31);
    _mm256_storeu_ps(acc + 64, c40); _mm256_storeu_ps(acc + 72, c41);
    _mm256_storeu_ps(acc + 80, c50); _mm256_storeu_ps(acc + 88, c51);
}
#else
__attribute__((noinline)) static void lin_micro(const float* x, long K, const float* wp, float* acc) {
    for (long i = 0; i < LIN_MR * LIN_NR; i++) acc[i] = 0.0f;
    for (long k = 0; k < K; k++)
        for (long r = 0; r < LIN_MR; r++) {
            float a = x[r * K + k];
            #pragma omp simd
            for (long j = 0; j < LIN_NR; j++) acc[r * LIN_NR + j] += a * wp[k * LIN_NR + j];
        }
}
#endif

/* exact GELU, 0.5 x (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (error below 1.5e-7):
   for z >= 0, erf(z) = 1 - P(t) exp(-z^2), t = 1 / (1 + p z); 1 + erf(-z) = P(t) exp(-z^2) has no cancellation */
static inline float lin_gelu(float x) {
    float z = fabsf(x) * 0.70710678f;
    float t = 1.0f / (1.0f + 0.3275911f * z);
    float pe = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))))
               * fast_expf(-z * z);
    return 0.5f * x * (x >= 0.0f ? 2.0f - pe : pe);
}

/* out (M x N) = act(LN(x) W^T + bias) + res. x M x K contiguous; Wp: ceil(N / 16) panels of K x 16 (zero
   padded); ln_w NULL: no LayerNorm (ln_b may be NULL: no shift); bias, res NULL: none; act 0 none, 1 GELU.
   Returns 1 when the row buffer cannot be allocated. */
int vlinear_f32(const float* x, long M, long K, const float* Wp, long N, const float* bias,
                const float* ln_w, const float* ln_b, float ln_eps, int act, const float* res, float* out) {
    long mp = (M + LIN_MR - 1) / LIN_MR * LIN_MR, nb = (N + LIN_NR - 1) / LIN_NR;
    float* xp = (float*)malloc(sizeof(float) * (size_t)(mp * K));
    if (!xp) return 1;
    for (long r = 0; r < M; r++) {
        const float* xr = x + r * K;
        float* dst = xp + r * K;
        if (ln_w) {
            float mean = 0.0f, var = 0.0f;
            for (long k = 0; k < K; k++) mean += xr[k];
            mean /= (float)K;
            for (long k = 0; k < K; k++) { float d = xr[k] - mean; var += d * d; }
            float inv = 1.0f / sqrtf(var / (float)K + ln_eps);
            #pragma omp simd
            for (long k = 0; k < K; k++) dst[k] = (xr[k] - mean) * inv * ln_w[k] + (ln_b ? ln_b[k] : 0.0f);
        } else {
            for (long k = 0; k < K; k++) dst[k] = xr[k];
        }
    }
    for (long i = M * K; i < mp * K; i++) xp[i] = 0.0f;
    float acc[LIN_MR * LIN_NR];
    for (long b = 0; b < nb; b++) {
        const float* wp = Wp + b * K * LIN_NR;
        long n0 = b * LIN_NR, nw = N - n0 < LIN_NR ? N - n0 : LIN_NR;
        for (long r0 = 0; r0 < mp; r0 += LIN_MR) {
            lin_micro(xp + r0 * K, K, wp, acc);
            for (long r = 0; r < LIN_MR && r0 + r < M; r++) {
                float* o = out + (r0 + r) * N + n0;
                const float* a = acc + r * LIN_NR;
                if (bias) {
                    for (long j = 0; j < nw; j++) o[j] = a[j] + bias[n0 + j];
                } else {
                    for (long j = 0; j < nw; j++) o[j] = a[j];
                }
            }
        }
    }
    free(xp);
    long total = M * N;
    if (act == 1) {
        #pragma omp simd
        for (long i = 0; i < total; i++) out[i] = lin_gelu(out[i]);
    }
    if (res) {
        #pragma omp simd
        for (long i = 0; i < total; i++) out[i] += res[i];
    }
    return 0;
}
"""


#: a whole BiSTSSM block in one call (``blocks.BiSTSSM``'s fused path), compiled after the
#: inference kernels (``vconv_silu_f32``, ``vgated_scan_f32``) whose definitions it calls
BLOCK_SOURCE = r"""
/* One BiSTSSM block on T tokens, inference, float32: x1 = x + out_proj(mixer(LN1 x)), out = x1 +
   fc2(GELU(fc1(LN2 x1))), the mixer being in_proj -> conv + SiLU -> x_proj -> gated scan (k
   directions, the sequences seg / tok as vconv_silu / vgated_scan take them, hist / h0 the carried
   state of one direction, new_hist / hlast where the next one goes, or NULL). Weights packed for
   vlinear_f32: w_in (2 di x C), w_x (k of them, m x di each, one after the other), w_out (C x di),
   w_fc1 (hidden x C), w_fc2 (C x hidden). Returns 1 when out of memory. */
int vblock_f32(const float* x, long T, long C, const float* ln1_w, const float* ln1_b, float eps1,
               const float* w_in, long di, long k, const long* seg, const long* tok, long s,
               const float* conv_w, const float* conv_b, long kw, const float* hist, float* new_hist,
               const float* w_x, long r, long n, const float* dt_proj_t, const float* dt_bias, const float* A_t,
               const float* D, const float* h0, float* hlast, const float* w_out,
               const float* ln2_w, const float* ln2_b, float eps2, const float* w_fc1, const float* b_fc1, long hidden,
               const float* w_fc2, const float* b_fc2, float* out, int nthreads) {
    long m = r + 2 * n, panel_x = (m + LIN_NR - 1) / LIN_NR * LIN_NR * di;
    float* buf = (float*)malloc(sizeof(float) * (size_t)(T * 2 * di + k * T * di + k * T * m + T * di + T * C + T * hidden));
    if (!buf) return 1;
    float *xz = buf, *u = xz + T * 2 * di, *xdbl = u + k * T * di, *y = xdbl + k * T * m, *x1 = y + T * di, *h = x1 + T * C;
    int st = vlinear_f32(x, T, C, w_in, 2 * di, 0, ln1_w, ln1_b, eps1, 0, 0, xz);     /* x, then the gate z */
    if (!st) vconv_silu_f32(xz, 2 * di, seg, tok, hist, conv_w, conv_b, u, new_hist, s, k, T, di, kw, nthreads);
    for (long dir = 0; dir < k && !st; dir++)
        st = vlinear_f32(u + dir * T * di, T, di, w_x + dir * panel_x, m, 0, 0, 0, 0.0f, 0, 0, xdbl + dir * T * m);
    if (!st) st = vgated_scan_f32(u, xdbl, dt_proj_t, dt_bias, A_t, D, xz + di, 2 * di, seg, tok, h0, hlast, y,
                                  s, k, T, di, n, r, nthreads);
    if (!st) st = vlinear_f32(y, T, di, w_out, C, 0, 0, 0, 0.0f, 0, x, x1);
    if (!st) st = vlinear_f32(x1, T, C, w_fc1, hidden, b_fc1, ln2_w, ln2_b, eps2, 1, 0, h);
    if (!st) st = vlinear_f32(h, T, hidden, w_fc2, C, b_fc2, 0, 0, 0.0f, 0, x1, out);
    free(buf);
    return st;
}
"""


@dataclass(frozen=True)
class PackedLinear:
    """An ``nn.Linear``'s weight in the kernel's layout (derived, never trained)."""

    panels: Tensor  # ceil(N / 16) x K x 16 float32: panel b holds output columns 16 b .. 16 b + 15, K-major
    bias: Tensor | None  # N float32
    in_features: int  # K
    out_features: int  # N

    @property
    def panels_ptr(self) -> int:
        return self.panels.data_ptr()

    @property
    def bias_ptr(self) -> int | None:
        return None if self.bias is None else self.bias.data_ptr()


def pack_linear(weight: Tensor, bias: Tensor | None = None) -> PackedLinear:
    """``weight`` N x K (as ``nn.Linear`` holds it) and ``bias`` N -> the packed form."""
    w = weight.detach().to(torch.float32)
    N, K = w.shape
    nb = -(-N // PANEL)
    padded = torch.zeros(nb * PANEL, K, dtype=torch.float32, device=w.device)
    padded[:N] = w
    panels = padded.view(nb, PANEL, K).transpose(1, 2).contiguous()  # nb x K x 16
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    return PackedLinear(panels, b, K, N)


def _lib():
    """The kernel library (``scan_cpu.load_kernel``, which also declares these functions' argument
    types), or None when it is unavailable."""
    from vimcan_core.model import scan_cpu  # scan_cpu compiles this module's source: imported late

    return scan_cpu.load_kernel()


def block_function():
    """The compiled ``vblock_f32`` (a whole BiSTSSM block), or None when the kernel library is unavailable."""
    lib = _lib()
    return None if lib is None else lib.vblock_f32


def available(x: Tensor) -> bool:
    """True when ``linear`` can take ``x`` (float32 on the CPU, no autograd, kernel built)."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and _lib() is not None)


def linear(x: Tensor, packed: PackedLinear, norm: nn.LayerNorm | None = None, gelu: bool = False,
           residual: Tensor | None = None) -> Tensor:
    """``act(norm(x) W^T + b) + residual`` in one kernel call: x M x K float32 (rows contiguous after
    ``.contiguous()``), residual M x N, result M x N. ``norm``: a LayerNorm over K applied first;
    ``gelu``: exact GELU after the bias. Inference only (see ``available``)."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("linear_cpu.linear needs the compiled CPU kernel, which is unavailable (see the log)")
    M, K = x.shape
    N = packed.out_features
    if K != packed.in_features:
        raise ValueError(f"linear: x has {K} features, the layer takes {packed.in_features}")
    x = x.contiguous()
    out = x.new_empty(M, N)
    res_ptr = None
    if residual is not None:
        if tuple(residual.shape) != (M, N):
            raise ValueError(f"linear: residual must be {M} x {N}, got {tuple(residual.shape)}")
        res_ptr = residual.contiguous().data_ptr()
    ln_w = ln_b = None
    eps = 0.0
    if norm is not None:  # parameters (always contiguous), read as they are now
        ln_w = norm.weight.data_ptr()
        ln_b = None if norm.bias is None else norm.bias.data_ptr()
        eps = norm.eps
    status = lib.vlinear_f32(x.data_ptr(), M, K, packed.panels_ptr, N, packed.bias_ptr, ln_w, ln_b, eps, 1 if gelu else 0,
                res_ptr, out.data_ptr())
    if status:
        raise MemoryError(f"linear_cpu.linear could not allocate its row buffer ({M} x {K} floats)")
    return out


def linear_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, norm: nn.LayerNorm | None = None,
               gelu: bool = False, residual: Tensor | None = None) -> Tensor:
    """``linear`` in PyTorch, from the unpacked weight."""
    if norm is not None:
        x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    y = F.linear(x, weight, bias)
    if gelu:
        y = F.gelu(y)
    return y if residual is None else y + residual
