"""A fused selective-scan kernel for the CPU, in plain C, compiled on first use.

The chunked PyTorch scan (``scan.py``) is vectorised but memory-bound: every step of its
closed form reads and writes a whole b x l x d x n tensor, about forty passes for a forward
and backward. This kernel runs the recurrence itself on blocks of ``LANES`` channels of one
(batch, group) at a time, the loops running over the block's channels (they vectorise, with
no horizontal sums, and B and C are read once per block): it reads u, delta, B, C once and
recomputes a block's states in the backward pass from h0 (only l x n x LANES per thread is
stored, never b x d x l x n). ``-ffast-math`` with ``#pragma omp simd``.

It is compiled with the system C compiler (``cc -O3 -ffast-math -fopenmp``, linked without
fast-math so that loading it leaves the process's floating-point mode alone) into
``~/.cache/vimcan/`` (or ``$VIMCAN_CACHE_DIR``) the first time it is needed, a second or two,
and loaded with ctypes. When no compiler is found or the build fails, ``load_kernel()``
returns None and the scan uses the chunked backend (the reason is logged once).

Same semantics and argument shapes as ``scan._ChunkedScan``: u, delta b x d x l; A d x n;
B, C b x g x n x l; h0 b x d x n -> y b x d x l, last b x d x n; delta_bias (d) and softplus are
applied by the kernel itself when given (``KernelScan``).

The same library holds the training conv + SiLU (``KernelConvSilu``), the inference-only
kernels of a mixer (``conv_silu``, ``gated_scan``: channel-last tokens, cut into sequences) and
the live step's linear layers (``linear_cpu``).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: largest state size the kernel takes
MAX_STATE = 256
#: channels the training kernels run together (one AVX2 register of floats)
LANES = 8

_TEMPLATE = r"""
/* Blocks of LANES channels of one (batch, group) run together: every inner loop runs over the
   lanes (so it vectorises, with no horizontal sums in the recurrence), and B and C, shared by
   the group's channels, are read once per block. A block's rows of u, delta (and gy) are
   copied time-major into per-thread buffers, and its outputs copied back. */
static void load_rows_SUF(const REAL* src, long row0, long w, long l, REAL* dst) {   /* w rows -> l x LANES */
    for (long j = 0; j < LANES; j++)
        for (long t = 0; t < l; t++) dst[t * LANES + j] = j < w ? src[(row0 + j) * l + t] : 0;
}

static void store_rows_SUF(const REAL* srcT, long row0, long w, long l, REAL* dst) {   /* l x LANES -> w rows */
    for (long j = 0; j < w; j++)
        for (long t = 0; t < l; t++) dst[(row0 + j) * l + t] = srcT[t * LANES + j];
}

static void load_lanes_SUF(const REAL* src, long row0, long w, long n, REAL* dst) {   /* w rows of n -> n x LANES */
    for (long k = 0; k < n; k++)
        for (long j = 0; j < LANES; j++) dst[k * LANES + j] = (src && j < w) ? src[(row0 + j) * n + k] : 0;
}

/* the block's delta (l x LANES, as loaded) + delta_bias of its channels, then softplus (torch's
   threshold 20) when asked; lanes beyond the block's width stay zero */
static void prep_delta_SUF(REAL* dT, const REAL* dbias, long c0, long w, long l, int softplus) {
    if (!dbias && !softplus) return;
    REAL bl[LANES], keep[LANES];
    for (long j = 0; j < LANES; j++) {
        bl[j] = (dbias && j < w) ? dbias[c0 + j] : 0;
        keep[j] = j < w;
    }
    for (long t = 0; t < l; t++) {
        REAL* dt = dT + t * LANES;
        if (softplus) {
            #pragma omp simd
            for (long j = 0; j < LANES; j++) {
                REAL v = dt[j] + bl[j];
                dt[j] = keep[j] * SOFTPLUS(v);
            }
        } else {
            #pragma omp simd
            for (long j = 0; j < LANES; j++) dt[j] += bl[j];
        }
    }
}

/* delta is the raw input; the scan uses delta + dbias (dbias d or NULL), through softplus when
   asked. Returns 0, or 1 when out of memory. */
int vscan_fwd_SUF(const REAL* u, const REAL* delta, const REAL* dbias, int softplus, const REAL* A, const REAL* B,
                  const REAL* C, const REAL* h0, REAL* y, REAL* last, long b, long d, long l, long n, long g, int nthreads) {
    long dg = d / g, nblk = (dg + LANES - 1) / LANES;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        REAL* buf = (REAL*)malloc(sizeof(REAL) * (3 * l + 2 * n) * LANES);
        if (!buf) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (long task = 0; task < b * g * nblk; task++) {
            if (!buf) continue;
            REAL *dT = buf, *uT = dT + l * LANES, *yT = uT + l * LANES, *h = yT + l * LANES, *Al = h + n * LANES;
            long bg = task / nblk, bi = bg / g, gi = bg % g;
            long c0 = gi * dg + (task % nblk) * LANES, w = gi * dg + dg - c0 < LANES ? gi * dg + dg - c0 : LANES;
            long row0 = bi * d + c0;
            const REAL* Bb = B + bg * n * l;   /* n x l */
            const REAL* Cb = C + bg * n * l;
            load_rows_SUF(delta, row0, w, l, dT);
            prep_delta_SUF(dT, dbias, c0, w, l, softplus);
            load_rows_SUF(u, row0, w, l, uT);
            load_lanes_SUF(A, c0, w, n, Al);
            load_lanes_SUF(h0, row0, w, n, h);
            for (long t = 0; t < l; t++) {
                REAL dt[LANES], du[LANES], acc[LANES];
                #pragma omp simd
                for (long j = 0; j < LANES; j++) {
                    dt[j] = dT[t * LANES + j];
                    du[j] = dt[j] * uT[t * LANES + j];
                    acc[j] = 0;
                }
                for (long k = 0; k < n; k++) {
                    REAL bk = Bb[k * l + t], ck = Cb[k * l + t];
                    REAL* hk = h + k * LANES;
                    const REAL* Ak = Al + k * LANES;
                    #pragma omp simd
                    for (long j = 0; j < LANES; j++) {
                        hk[j] = EXP(dt[j] * Ak[j]) * hk[j] + du[j] * bk;
                        acc[j] += hk[j] * ck;
                    }
                }
                for (long j = 0; j < LANES; j++) yT[t * LANES + j] = acc[j];
            }
            store_rows_SUF(yT, row0, w, l, y);
            if (last)
                for (long j = 0; j < w; j++)
                    for (long k = 0; k < n; k++) last[(row0 + j) * n + k] = h[k * LANES + j];
        }
        free(buf);
    }
    return failed;
}

/* gA must be zeroed by the caller (it is accumulated into); gB and gC are written. h0, glast
   and gh0 may be NULL (zero state, no gradient into the last state, initial state gradient
   not wanted). One task per (batch, group): the group's channels share B and C, so one thread
   owns their gradients, summed over lanes once per task. Returns 0, or 1 when out of memory. */
int vscan_bwd_SUF(const REAL* u, const REAL* delta, const REAL* dbias, int softplus, const REAL* A, const REAL* B,
                  const REAL* C, const REAL* h0, const REAL* gy, const REAL* glast,
                  REAL* gu, REAL* gdelta, REAL* gA, REAL* gB, REAL* gC, REAL* gh0,
                  long b, long d, long l, long n, long g, int nthreads) {
    long dg = d / g, nblk = (dg + LANES - 1) / LANES;
    int failed = 0;
    REAL* gA_thr = (REAL*)calloc((size_t)nthreads * d * n, sizeof(REAL));
    if (!gA_thr) return 1;
    #pragma omp parallel num_threads(nthreads)
    {
        /* time-major block buffers: delta, u, gy, gdelta, gu (l x LANES each); states h_0..h_l and
           decays ((l + 1) x n x LANES, l x n x LANES); lane sums of gB and gC (n x l x LANES each);
           dL/dh, A and gA of the block (n x LANES each) */
        size_t sz = (size_t)LANES * (5 * l + (l + 1) * n + l * n + 2 * n * l + 3 * n);
        REAL* buf = (REAL*)malloc(sizeof(REAL) * sz);
        if (!buf) {
            #pragma omp atomic write
            failed = 1;
        }
        REAL* gAt = gA_thr + (size_t)omp_get_thread_num() * d * n;
        #pragma omp for schedule(dynamic)
        for (long bg = 0; bg < b * g; bg++) {
            if (!buf) continue;
            REAL *dT = buf, *uT = dT + l * LANES, *gyT = uT + l * LANES, *gdT = gyT + l * LANES, *guT = gdT + l * LANES;
            REAL *hs = guT + l * LANES, *as = hs + (l + 1) * n * LANES, *gBs = as + l * n * LANES, *gCs = gBs + n * l * LANES;
            REAL *gh = gCs + n * l * LANES, *Al = gh + n * LANES, *gAl = Al + n * LANES;
            long bi = bg / g, gi = bg % g;
            const REAL* Bb = B + bg * n * l;   /* n x l */
            const REAL* Cb = C + bg * n * l;
            for (long i = 0; i < 2 * n * l * LANES; i++) gBs[i] = 0;   /* gBs and gCs */
            for (long blk = 0; blk < nblk; blk++) {
                long c0 = gi * dg + blk * LANES, w = gi * dg + dg - c0 < LANES ? gi * dg + dg - c0 : LANES;
                long row0 = bi * d + c0;
                load_rows_SUF(delta, row0, w, l, dT);
                prep_delta_SUF(dT, dbias, c0, w, l, softplus);
                load_rows_SUF(u, row0, w, l, uT);
                load_rows_SUF(gy, row0, w, l, gyT);
                load_lanes_SUF(A, c0, w, n, Al);
                load_lanes_SUF(h0, row0, w, n, hs);   /* hs[0] = h_0 */
                load_lanes_SUF(glast, row0, w, n, gh);
                for (long i = 0; i < n * LANES; i++) gAl[i] = 0;
                for (long t = 0; t < l; t++) {   /* recompute the states */
                    const REAL* hp = hs + t * n * LANES;
                    REAL* ht = hs + (t + 1) * n * LANES;
                    REAL* at = as + t * n * LANES;
                    REAL du[LANES];
                    #pragma omp simd
                    for (long j = 0; j < LANES; j++) du[j] = dT[t * LANES + j] * uT[t * LANES + j];
                    for (long k = 0; k < n; k++) {
                        REAL bk = Bb[k * l + t];
                        #pragma omp simd
                        for (long j = 0; j < LANES; j++) {
                            REAL a = EXP(dT[t * LANES + j] * Al[k * LANES + j]);
                            at[k * LANES + j] = a;
                            ht[k * LANES + j] = a * hp[k * LANES + j] + du[j] * bk;
                        }
                    }
                }
                for (long t = l - 1; t >= 0; t--) {   /* adjoint recurrence */
                    const REAL* hp = hs + t * n * LANES;   /* h_{t-1} */
                    const REAL* ht = hp + n * LANES;
                    const REAL* at = as + t * n * LANES;
                    REAL dt[LANES], du[LANES], gyt[LANES], gdu[LANES], gdA_A[LANES];
                    #pragma omp simd
                    for (long j = 0; j < LANES; j++) {
                        dt[j] = dT[t * LANES + j];
                        du[j] = dt[j] * uT[t * LANES + j];
                        gyt[j] = gyT[t * LANES + j];
                        gdu[j] = 0;
                        gdA_A[j] = 0;
                    }
                    for (long k = 0; k < n; k++) {
                        REAL bk = Bb[k * l + t], ck = Cb[k * l + t];
                        REAL* gBk = gBs + (k * l + t) * LANES;
                        REAL* gCk = gCs + (k * l + t) * LANES;
                        REAL* ghk_ = gh + k * LANES;
                        REAL* gAk = gAl + k * LANES;
                        const REAL* Ak = Al + k * LANES;
                        #pragma omp simd
                        for (long j = 0; j < LANES; j++) {
                            REAL ghk = ghk_[j] + gyt[j] * ck;   /* dL/dh_t */
                            REAL a = at[k * LANES + j];
                            gCk[j] += gyt[j] * ht[k * LANES + j];
                            gBk[j] += ghk * du[j];
                            gdu[j] += ghk * bk;
                            REAL gdA = ghk * a * hp[k * LANES + j];   /* dL/d(delta_t A) */
                            gdA_A[j] += gdA * Ak[j];
                            gAk[j] += gdA * dt[j];
                            ghk_[j] = ghk * a;                        /* dL/dh_{t-1} through h_t */
                        }
                    }
                    #pragma omp simd
                    for (long j = 0; j < LANES; j++) {
                        gdT[t * LANES + j] = gdA_A[j] + gdu[j] * uT[t * LANES + j];
                        guT[t * LANES + j] = gdu[j] * dt[j];
                    }
                }
                if (softplus) {   /* d softplus(x) / dx = sigmoid(x) = 1 - exp(-softplus(x)) */
                    #pragma omp simd
                    for (long i = 0; i < l * LANES; i++) gdT[i] *= 1 - EXP(-dT[i]);
                }
                store_rows_SUF(gdT, row0, w, l, gdelta);
                store_rows_SUF(guT, row0, w, l, gu);
                for (long j = 0; j < w; j++)
                    for (long k = 0; k < n; k++) {
                        gAt[(c0 + j) * n + k] += gAl[k * LANES + j];
                        if (gh0) gh0[(row0 + j) * n + k] = gh[k * LANES + j];
                    }
            }
            for (long i = 0; i < n * l; i++) {   /* lanes beyond a block's width hold zeros */
                REAL sb = 0, sc = 0;
                for (long j = 0; j < LANES; j++) {
                    sb += gBs[i * LANES + j];
                    sc += gCs[i * LANES + j];
                }
                gB[bg * n * l + i] = sb;
                gC[bg * n * l + i] = sc;
            }
        }
        free(buf);
    }
    for (int t = 0; t < nthreads; t++)
        for (long i = 0; i < d * n; i++) gA[i] += gA_thr[(size_t)t * d * n + i];
    free(gA_thr);
    return failed;
}
"""

#: inference only (no backward): the two ends of one ``SSMMixer``'s inference path, on
#: channel-last tokens (T x d) cut into s sequences by offsets (sequence i is tokens
#: seg[i] .. seg[i+1] - 1 in scan order; scan position p is row tok[p] of x, z and y, or row p
#: when tok is NULL), in one or two directions; see ``conv_silu`` and ``gated_scan``
_INFER_TEMPLATE = r"""
#define ROW(p) (tok ? tok[p] : (p))
/* Direction 0 is the causal conv, u_t = silu(b + sum_j w_j x_{t-(kw-1)+j}); direction 1 is the causal
   conv of the reversed sequence, u_t = silu(b + sum_j w_j x_{t+(kw-1)-j}). Tokens outside the sequence
   are zero, except that hist (k = 1 only) holds the kw - 1 tokens before its first (a stream's conv
   state). Loops run over channels innermost, so they vectorise. */
void vconv_silu_SUF(const REAL* x, long x_row_stride, const long* seg, const long* tok, const REAL* hist, const REAL* w,
                    const REAL* bias, REAL* u, REAL* new_hist, long s, long k, long T, long d, long kw,
                    int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long si = 0; si < s; si++) {
        long t0 = seg[si], l = seg[si + 1] - seg[si];
        const REAL* hs = hist ? hist + si * d * (kw - 1) : 0;
        for (long dir = 0; dir < k; dir++)
            for (long t = 0; t < l; t++) {
                REAL* ut = u + (dir * T + t0 + t) * d;
                const REAL* b = bias + dir * d;
                #pragma omp simd
                for (long c = 0; c < d; c++) ut[c] = b[c];
                for (long j = 0; j < kw; j++) {
                    long pos = dir == 0 ? t - (kw - 1) + j : t + (kw - 1) - j;
                    const REAL* wj = w + (dir * kw + j) * d;   /* tap j of every channel */
                    if (pos >= l) continue;
                    if (pos >= 0) {
                        const REAL* xp = x + ROW(t0 + pos) * x_row_stride;
                        #pragma omp simd
                        for (long c = 0; c < d; c++) ut[c] += wj[c] * xp[c];
                    } else if (hs) {
                        #pragma omp simd
                        for (long c = 0; c < d; c++) ut[c] += wj[c] * hs[c * (kw - 1) + (kw - 1) + pos];
                    }
                }
                #pragma omp simd
                for (long c = 0; c < d; c++) ut[c] = ut[c] / (1 + EXP(-ut[c]));   /* SiLU */
            }
        if (new_hist)   /* the last kw - 1 tokens: the next call's hist */
            for (long c = 0; c < d; c++)
                for (long j = 0; j < kw - 1; j++) {
                    long pos = l - (kw - 1) + j;
                    new_hist[(si * d + c) * (kw - 1) + j] = pos >= 0 ? x[ROW(t0 + pos) * x_row_stride + c]
                        : hs ? hs[c * (kw - 1) + (kw - 1) + pos] : 0;
                }
    }
}

int vgated_scan_SUF(const REAL* u, const REAL* xdbl, const REAL* wdt, const REAL* dt_bias, const REAL* At,
                     const REAL* D, const REAL* z, long z_row_stride, const long* seg, const long* tok, const REAL* h0,
                     REAL* hlast, REAL* y, long s, long k, long T, long d, long n, long r, int nthreads) {
    long m = r + 2 * n;  /* x_proj output per token: dt_low (r), B (n), C (n) */
    int failed = 0;   /* 1: a thread could not allocate its scratch (returned) */
    #pragma omp parallel num_threads(nthreads)
    {
        /* a state h, state-major n x d (as h0 and hlast), so that every loop below runs over
           channels: no horizontal sums; then delta, delta u and the token's output */
        REAL* scratch = (REAL*)malloc(sizeof(REAL) * (n * d + 3 * d));
        if (!scratch) {
            #pragma omp atomic write
            failed = 1;
        }
        REAL* delta = scratch + n * d;
        REAL* du = delta + d;
        REAL* acc = du + d;
        #pragma omp for schedule(static)
        for (long si = 0; si < s; si++) {
            if (!scratch) continue;
            long t0 = seg[si], l = seg[si + 1] - seg[si];
            for (long t = 0; t < l; t++)   /* y accumulates the directions */
                for (long c = 0; c < d; c++) y[ROW(t0 + t) * d + c] = 0;
            for (long dir = 0; dir < k; dir++) {
                REAL* h = hlast ? hlast + si * n * d : scratch;   /* n x d, updated in place */
                for (long i = 0; i < n * d; i++) h[i] = h0 ? h0[si * n * d + i] : 0;
                for (long step = 0; step < l; step++) {
                    long t = dir == 0 ? step : l - 1 - step;   /* direction 1 runs backwards */
                    const REAL* row = xdbl + (dir * T + t0 + t) * m;
                    const REAL* Bq = row + r;
                    const REAL* Cq = row + r + n;
                    const REAL* ut = u + (dir * T + t0 + t) * d;
                    const REAL* Dk = D + dir * d;
                    /* delta = softplus(dt_proj(dt_low) + dt_bias), torch's softplus threshold 20 */
                    #pragma omp simd
                    for (long c = 0; c < d; c++) delta[c] = dt_bias[dir * d + c];
                    for (long j = 0; j < r; j++) {
                        const REAL* wj = wdt + (dir * r + j) * d;
                        #pragma omp simd
                        for (long c = 0; c < d; c++) delta[c] += row[j] * wj[c];
                    }
                    #pragma omp simd
                    for (long c = 0; c < d; c++) {
                        delta[c] = SOFTPLUS(delta[c]);
                        du[c] = delta[c] * ut[c];
                        acc[c] = Dk[c] * ut[c];
                    }
                    for (long q = 0; q < n; q++) {
                        const REAL* Aq = At + (dir * n + q) * d;
                        REAL* hq = h + q * d;
                        REAL bq = Bq[q], cq = Cq[q];
                        #pragma omp simd
                        for (long c = 0; c < d; c++) {
                            REAL hv = EXP(delta[c] * Aq[c]) * hq[c] + du[c] * bq;
                            hq[c] = hv;
                            acc[c] += hv * cq;
                        }
                    }
                    REAL* yt = y + ROW(t0 + t) * d;
                    #pragma omp simd
                    for (long c = 0; c < d; c++) yt[c] += acc[c];
                }
            }
            for (long t = 0; t < l; t++) {   /* gate: y * silu(z) */
                const REAL* zt = z + ROW(t0 + t) * z_row_stride;
                REAL* yt = y + ROW(t0 + t) * d;
                #pragma omp simd
                for (long c = 0; c < d; c++) yt[c] *= zt[c] / (1 + EXP(-zt[c]));
            }
        }
        free(scratch);
    }
    return failed;
}
"""

#: training: SiLU of a causal depthwise convolution over rows of length l (rows = batch x
#: channels, channel = row % d, k taps, zero padding before each row) and its backward, which
#: recomputes the pre-activation; each loop runs over time, so it vectorises
_CONV_TEMPLATE = r"""
static void cconv_pre_SUF(const REAL* xr, const REAL* wc, REAL bias, REAL* pre, long l, long kw) {
    #pragma omp simd
    for (long t = 0; t < l; t++) pre[t] = bias;
    for (long j = 0; j < kw; j++) {   /* tap j reads the input kw - 1 - j steps back */
        long back = kw - 1 - j;
        REAL wj = wc[j];
        #pragma omp simd
        for (long t = back; t < l; t++) pre[t] += wj * xr[t - back];
    }
}

void vcconv_silu_fwd_SUF(const REAL* x, const REAL* w, const REAL* bias, REAL* y, long rows, long d, long l, long kw,
                         int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long row = 0; row < rows; row++) {
        long c = row % d;
        REAL* yr = y + row * l;
        cconv_pre_SUF(x + row * l, w + c * kw, bias[c], yr, l, kw);
        #pragma omp simd
        for (long t = 0; t < l; t++) yr[t] = yr[t] / (1 + EXP(-yr[t]));
    }
}

/* gw (d x kw) and gb (d) are written here (not accumulated into). Returns 0, or 1 when out of memory. */
int vcconv_silu_bwd_SUF(const REAL* x, const REAL* w, const REAL* bias, const REAL* gy, REAL* gx, REAL* gw, REAL* gb,
                        long rows, long d, long l, long kw, int nthreads) {
    REAL* part = (REAL*)calloc((size_t)nthreads * d * (kw + 1), sizeof(REAL));   /* per thread: gw, then gb */
    if (!part) return 1;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        REAL* pre = (REAL*)malloc(sizeof(REAL) * l);
        if (!pre) {
            #pragma omp atomic write
            failed = 1;
        }
        REAL* gw_t = part + (size_t)omp_get_thread_num() * d * (kw + 1);
        REAL* gb_t = gw_t + d * kw;
        #pragma omp for schedule(static)
        for (long row = 0; row < rows; row++) {
            if (!pre) continue;
            long c = row % d;
            const REAL* xr = x + row * l;
            const REAL* gyr = gy + row * l;
            const REAL* wc = w + c * kw;
            REAL* gxr = gx + row * l;
            cconv_pre_SUF(xr, wc, bias[c], pre, l, kw);
            REAL sb = 0;
            #pragma omp simd reduction(+:sb)
            for (long t = 0; t < l; t++) {   /* pre becomes dL/dpre: silu'(p) = s (1 + p (1 - s)) */
                REAL s = 1 / (1 + EXP(-pre[t]));
                pre[t] = gyr[t] * s * (1 + pre[t] * (1 - s));
                sb += pre[t];
            }
            gb_t[c] += sb;
            #pragma omp simd
            for (long t = 0; t < l; t++) gxr[t] = 0;
            for (long j = 0; j < kw; j++) {
                long back = kw - 1 - j;
                REAL wj = wc[j], sw = 0;
                #pragma omp simd reduction(+:sw)
                for (long t = back; t < l; t++) {
                    gxr[t - back] += wj * pre[t];
                    sw += pre[t] * xr[t - back];
                }
                gw_t[c * kw + j] += sw;
            }
        }
        free(pre);
    }
    for (long i = 0; i < d * kw; i++) gw[i] = 0;
    for (long i = 0; i < d; i++) gb[i] = 0;
    for (int th = 0; th < nthreads; th++) {
        const REAL* pt = part + (size_t)th * d * (kw + 1);
        for (long i = 0; i < d * kw; i++) gw[i] += pt[i];
        for (long i = 0; i < d; i++) gb[i] += pt[d * kw + i];
    }
    free(part);
    return failed;
}
"""

_HEADER = "#include <math.h>\n#include <stdlib.h>\n#include <omp.h>\n"

#: exp for the float kernels, inlined so that the loops around it vectorise without a library
#: call per 8 values: exp(x) = 2^k exp(r), x = k ln 2 + r, |r| <= ln 2 / 2, exp(r) by its Taylor
#: series to r^7 / 7! (relative error below 2e-7, as expf). x is clamped to
#: [-87, 88]: below, the true value is under float's smallest normal number anyway.
_FAST_EXP_F32 = r"""
static inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float k = floorf(x * 1.44269504f + 0.5f);               /* nearest integer to x / ln 2 */
    float r = (x - k * 0.693145752f) - k * 1.42860677e-6f;   /* ln 2 split in two: r exact enough */
    float p = 1.0f + r * (1.0f + r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120
              + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    union { float f; int i; } scale = { .i = ((int)k + 127) << 23 };   /* 2^k */
    return p * scale.f;
}

/* softplus with torch's threshold: x above 20, else log(1 + exp(x)) = max(x, 0) + log(1 + e),
   e = exp(-|x|) in (0, 1], and log(w) for w = 1 + e in (1, 2] as 2 atanh(s), s = (w - 1) / (w + 1)
   <= 1/3, by its series to s^11 (relative error below 1e-7). Inlined: libm's log1pf is a call per
   value, which kept the delta loops from vectorising (most of a live step's scan time) */
static inline float fast_softplusf(float x) {
    float e = fast_expf(-fabsf(x));
    float s = e / (2.0f + e), s2 = s * s;
    float lg = 2.0f * s * (1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9 + s2 * (1.0f / 11))))));
    return x > 20.0f ? x : (x > 0.0f ? x : 0.0f) + lg;
}

static inline double softplus_f64(double x) { return x > 20.0 ? x : log1p(exp(x)); }
"""


def _source() -> str:
    from vimcan_core.model.linear_cpu import BLOCK_SOURCE, LINEAR_SOURCE  # the live step's blocks (float32 only)

    parts = [_HEADER, f"#define MAXN {MAX_STATE}\n#define LANES {LANES}\n", _FAST_EXP_F32, LINEAR_SOURCE]
    for real, suf, exp, softplus in (("float", "f32", "fast_expf", "fast_softplusf"), ("double", "f64", "exp", "softplus_f64")):
        for template in (_TEMPLATE, _CONV_TEMPLATE, _INFER_TEMPLATE):
            parts.append(template.replace("REAL", real).replace("SUF", suf).replace("EXP", exp).replace("SOFTPLUS", softplus))
    parts.append(BLOCK_SOURCE)  # a whole BiSTSSM block, calling the float32 kernels above
    return "".join(parts)


def _cache_dir() -> Path:
    return Path(os.environ.get("VIMCAN_CACHE_DIR", Path.home() / ".cache" / "vimcan"))


_FLAGS = ["-O3", "-ffast-math", "-fopenmp", "-fPIC", "-march=native"]
#: linked in a separate step, without -ffast-math: linking with it adds crtfastmath.o, whose
#: constructor turns on flush-to-zero for the whole process as soon as the library loads
_LINK_FLAGS = ["-shared", "-fopenmp"]


def _build() -> Path:
    src = _source()
    digest = hashlib.sha1((src + " ".join(_FLAGS + _LINK_FLAGS)).encode()).hexdigest()[:12]
    target = _cache_dir() / f"vimcan_scan_cpu_{digest}.so"
    if target.is_file():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) found; install one (apt-get install gcc) to use the CPU kernel")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        c_file = Path(tmp) / "scan.c"
        c_file.write_text(src)
        obj = Path(tmp) / "scan.o"
        out = Path(tmp) / target.name
        for cmd in ([cc, *_FLAGS, "-c", str(c_file), "-o", str(obj)], [cc, *_LINK_FLAGS, str(obj), "-o", str(out), "-lm"]):
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{cc} failed to build the CPU scan kernel: {res.stderr.strip()[:2000]}")
        os.replace(out, target)  # atomic: a parallel build by another process is harmless
    log.info("built the CPU selective-scan kernel %s", target)
    return target


@lru_cache(maxsize=1)
def load_kernel() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here (logged once)."""
    if os.environ.get("VIMCAN_DISABLE_CPU_KERNEL"):
        return None
    try:
        lib = ctypes.CDLL(str(_build()))
    except Exception as exc:
        log.warning("CPU selective-scan kernel unavailable, using the chunked PyTorch scan: %s", exc)
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for suf in ("f32", "f64"):
        getattr(lib, f"vscan_fwd_{suf}").argtypes = [p] * 3 + [i32] + [p] * 6 + [i64] * 5 + [i32]
        getattr(lib, f"vscan_bwd_{suf}").argtypes = [p] * 3 + [i32] + [p] * 12 + [i64] * 5 + [i32]
        getattr(lib, f"vscan_fwd_{suf}").restype = i32
        getattr(lib, f"vscan_bwd_{suf}").restype = i32
        getattr(lib, f"vconv_silu_{suf}").argtypes = [p, i64] + [p] * 7 + [i64] * 5 + [i32]
        getattr(lib, f"vgated_scan_{suf}").argtypes = [p] * 7 + [i64] + [p] * 5 + [i64] * 6 + [i32]
        getattr(lib, f"vcconv_silu_fwd_{suf}").argtypes = [p] * 4 + [i64] * 4 + [i32]
        getattr(lib, f"vcconv_silu_bwd_{suf}").argtypes = [p] * 7 + [i64] * 4 + [i32]
        getattr(lib, f"vcconv_silu_bwd_{suf}").restype = i32
        getattr(lib, f"vgated_scan_{suf}").restype = i32
    f32 = ctypes.c_float  # the live step's float32-only kernels (linear_cpu)
    lib.vlinear_f32.argtypes = [p, i64, i64, p, i64, p, p, p, f32, i32, p, p]
    lib.vlinear_f32.restype = i32
    lib.vblock_f32.argtypes = [p, i64, i64, p, p, f32, p, i64, i64, p, p, i64, p, p, i64, p, p, p, i64, i64,
                               p, p, p, p, p, p, p, p, p, f32, p, p, i64, p, p, p, i32]
    lib.vblock_f32.restype = i32
    return lib


def kernel_supports(device: torch.device, dtype: torch.dtype, n: int) -> bool:
    """True when the kernels can run tensors of this device and dtype with ``n`` states
    (CPU, float32/64, n <= MAX_STATE) and they built."""
    return (device.type == "cpu" and dtype in (torch.float32, torch.float64) and n <= MAX_STATE
            and load_kernel() is not None)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _typed(lib: ctypes.CDLL, name: str, dtype: torch.dtype):
    """Kernel ``name`` for float32 or float64 tensors (``name_f32`` / ``name_f64``)."""
    return getattr(lib, f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")


def _check_memory(status: int, what: str, x: Tensor) -> None:
    if status:
        raise MemoryError(f"the CPU kernel's {what} pass could not allocate its per-thread buffers "
                          f"(input {tuple(x.shape)}, {torch.get_num_threads()} threads)")


class KernelScan(torch.autograd.Function):
    """The scan through the C kernel; inputs as ``scan._ChunkedScan``, except that ``delta`` may
    come raw: the kernel adds ``delta_bias`` (d) and applies softplus itself (``softplus``), in
    the pass that reads delta anyway, and returns the gradient of the raw delta and the bias."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
                want_last: bool = True, delta_bias: Tensor | None = None, softplus: bool = False):  # noqa: D401
        """h0 None: zero initial state; want_last False: ``last`` comes back empty (not computed)."""
        lib = load_kernel()
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        h0 = None if h0 is None else h0.contiguous()
        delta_bias = None if delta_bias is None else delta_bias.to(u.dtype).contiguous()
        y = torch.empty_like(u)
        last = u.new_empty(b, d, n) if want_last else u.new_empty(0)
        _check_memory(_typed(lib, "vscan_fwd", u.dtype)(
            _ptr(u), _ptr(delta), _ptr(delta_bias), int(softplus), _ptr(A), _ptr(B), _ptr(C), _ptr(h0), _ptr(y),
            _ptr(last) if want_last else None, b, d, l, n, g, torch.get_num_threads(),
        ), "forward", u)
        ctx.has_h0, ctx.has_bias, ctx.softplus = h0 is not None, delta_bias is not None, softplus
        empty = u.new_empty(0)
        ctx.save_for_backward(u, delta, A, B, C, h0 if h0 is not None else empty, delta_bias if delta_bias is not None else empty)
        return y, last

    @staticmethod
    def backward(ctx, gy: Tensor, glast: Tensor):
        lib = load_kernel()
        u, delta, A, B, C, h0, delta_bias = ctx.saved_tensors
        h0 = h0 if ctx.has_h0 else None
        delta_bias = delta_bias if ctx.has_bias else None
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        glast = None if glast is None or glast.numel() == 0 else glast.contiguous()
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)
        gA = torch.zeros_like(A)
        gB, gC = torch.empty_like(B), torch.empty_like(C)
        want_gh0 = h0 is not None and ctx.needs_input_grad[5]
        gh0 = torch.empty_like(h0) if want_gh0 else None
        _check_memory(_typed(lib, "vscan_bwd", u.dtype)(
            _ptr(u), _ptr(delta), _ptr(delta_bias), int(ctx.softplus), _ptr(A), _ptr(B), _ptr(C), _ptr(h0), _ptr(gy),
            _ptr(glast), _ptr(gu), _ptr(gdelta), _ptr(gA), _ptr(gB), _ptr(gC), _ptr(gh0),
            b, d, l, n, g, torch.get_num_threads(),
        ), "backward", u)
        gbias = gdelta.sum((0, 2)) if delta_bias is not None and ctx.needs_input_grad[7] else None  # d
        return gu, gdelta, gA, gB, gC, gh0, None, gbias, None


class KernelConvSilu(torch.autograd.Function):
    """``silu(causal depthwise conv1d)`` through the C kernel, for training: x Ns x d x l,
    weight d x 1 x kw (``nn.Conv1d`` / ``SSMMixer.conv_weight`` layout), bias d -> Ns x d x l.
    The backward recomputes the pre-activation from x (nothing but x is saved). PyTorch's
    grouped ``conv1d`` backward on the CPU was a fifth of a training step."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # noqa: D401
        lib = load_kernel()
        x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
        ns, d, l = x.shape
        y = torch.empty_like(x)
        _typed(lib, "vcconv_silu_fwd", x.dtype)(_ptr(x), _ptr(weight), _ptr(bias), _ptr(y), ns * d, d, l, weight.shape[-1],
                                                 torch.get_num_threads())
        ctx.save_for_backward(x, weight, bias)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        lib = load_kernel()
        x, weight, bias = ctx.saved_tensors
        ns, d, l = x.shape
        gy = gy.contiguous()
        gx, gw, gb = torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)
        _check_memory(_typed(lib, "vcconv_silu_bwd", x.dtype)(
            _ptr(x), _ptr(weight), _ptr(bias), _ptr(gy), _ptr(gx), _ptr(gw), _ptr(gb), ns * d, d, l, weight.shape[-1],
            torch.get_num_threads()), "conv backward", x)
        return gx, gw, gb


def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``silu(conv1d(x, weight, bias, padding=kw - 1, groups=d)[..., :l])``: the causal depthwise
    convolution + SiLU of a Mamba mixer, x Ns x d x l, weight d x 1 x kw, bias d. Through the C
    kernel (``KernelConvSilu``) when it can run these tensors, else with ``conv1d``."""
    if x.dim() != 3 or weight.shape != (x.shape[1], 1, weight.shape[-1]) or bias.shape != (x.shape[1],):
        raise ValueError(f"causal_conv1d_silu: x must be Ns x d x l, weight d x 1 x kw and bias d, got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    if kernel_supports(x.device, x.dtype, 0) and weight.dtype == x.dtype and bias.dtype == x.dtype:
        return KernelConvSilu.apply(x, weight, bias)
    kw, l = weight.shape[-1], x.shape[-1]
    return torch.nn.functional.silu(torch.nn.functional.conv1d(x, weight, bias, padding=kw - 1, groups=x.shape[1])[..., :l])


def _rows(x: Tensor) -> tuple[Tensor, int]:
    """``x`` (T x d, unit-stride channels: e.g. a slice of a linear layer's output) and its row
    stride; copied to contiguous memory only when its channels are strided."""
    if x.shape[1] > 1 and x.stride(1) != 1:
        x = x.contiguous()
    return x, x.stride(0)


def _kernel() -> ctypes.CDLL:
    lib = load_kernel()
    if lib is None:
        raise RuntimeError("the inference kernels need the compiled CPU kernel, which is unavailable (see the log); "
                           "use the *_ref functions")
    return lib


@dataclass(frozen=True)
class Sequences:
    """T tokens cut into s sequences, as the inference kernels take them (``sequence_offsets``)."""

    offsets: Tensor  # s + 1 int64 on the CPU: sequence i is scan positions offsets[i] .. offsets[i+1] - 1
    num_tokens: int  # T
    order: Tensor | None = None  # T int64: scan position p is token (row) order[p]; None: p itself

    @property
    def count(self) -> int:
        return self.offsets.numel() - 1

    def bounds(self) -> list[tuple[int, int]]:
        """(first token, one past the last) of each sequence."""
        o = self.offsets.tolist()
        return list(zip(o[:-1], o[1:]))


def sequence_offsets(lengths: tuple[int, ...] | list[int], order: tuple[int, ...] | list[int] | None = None) -> Sequences:
    """Sequences of these lengths, one after the other, over the tokens taken in ``order`` (a
    permutation of 0 .. T - 1; None: as they are). Build it once per shape and reuse it."""
    if not lengths or any(int(l) < 1 for l in lengths):
        raise ValueError(f"sequence lengths must be at least 1, got {lengths}")
    offsets = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
    T = int(offsets[-1])
    if order is not None and sorted(order) != list(range(T)):
        raise ValueError(f"token order must be a permutation of 0 .. {T - 1}, got {order}")
    return Sequences(offsets, T, None if order is None else torch.tensor(order, dtype=torch.int64))


def _check_sequences(seqs: Sequences, T: int) -> int:
    """Checks ``seqs`` against T tokens; returns the number of sequences."""
    if not isinstance(seqs, Sequences) or seqs.num_tokens != T:
        raise ValueError(f"sequences must come from sequence_offsets() and cover {T} tokens, got {seqs}")
    return seqs.count


def conv_silu(x: Tensor, offsets: Sequences, weight: Tensor, bias: Tensor, k: int, hist: Tensor | None = None,
              want_hist: bool = False) -> tuple[Tensor, Tensor | None]:
    """Inference only (no autograd): the depthwise conv + SiLU of an ``SSMMixer`` for k = 1 or 2
    directions, in one kernel call (``conv_silu_ref`` is the same in PyTorch).

    x T x d: channel-last tokens (rows may be strided, e.g. a slice of in_proj's output), cut
    into s sequences by ``offsets`` (``sequence_offsets``: sequence i is scan positions o[i] ..
    o[i+1] - 1, position p being token ``offsets.order[p]``);
    weight k x kw x d (tap-major: ``conv_weight.view(k, d, kw).transpose(1, 2)``), bias k*d. Direction 0 is the causal conv (each token and the kw - 1 before
    it), direction 1 the causal conv of the reversed sequence (each token and the kw - 1 after
    it), zero padded at the sequence ends. ``hist`` s x d x (kw - 1) (k = 1 only): the tokens
    before each sequence, oldest first (a stream's conv state). Returns u k x T x d (in scan order) and, with
    ``want_hist``, each sequence's last kw - 1 tokens s x d x (kw - 1) (the next ``hist``), else None.
    """
    lib = _kernel()
    T, d = x.shape
    kw = weight.shape[1]
    s = _check_sequences(offsets, T)
    if k == 2 and (hist is not None or want_hist):
        raise ValueError("conv_silu: a carried history (hist / want_hist) needs a single direction (k = 1)")
    x, x_row_stride = _rows(x)
    weight, bias = weight.contiguous(), bias.contiguous()
    hist = None if hist is None else hist.contiguous()
    u = x.new_empty(k, T, d)
    new_hist = x.new_empty(s, d, kw - 1) if want_hist else None
    _typed(lib, "vconv_silu", x.dtype)(
        _ptr(x), x_row_stride, _ptr(offsets.offsets), _ptr(offsets.order), _ptr(hist), _ptr(weight), _ptr(bias), _ptr(u), _ptr(new_hist),
        s, k, T, d, kw, torch.get_num_threads(),
    )
    return u, new_hist


def conv_silu_ref(x: Tensor, offsets: Sequences, weight: Tensor, bias: Tensor, k: int, hist: Tensor | None = None,
                  want_hist: bool = False) -> tuple[Tensor, Tensor | None]:
    """``conv_silu`` with ``torch.nn.functional.conv1d`` as ``SSMMixer.forward`` computes it, one
    sequence at a time."""
    T, d = x.shape
    kw = weight.shape[1]
    weight = weight.transpose(1, 2)  # k x d x kw, as conv1d takes it
    if offsets.order is not None:
        x = x[offsets.order]  # T x d, in scan order
    us, hists = [], []
    for i, (t0, t1) in enumerate(offsets.bounds()):
        seq = x[t0:t1].t()[None]  # 1 x d x l
        if hist is not None:
            seq = torch.cat((hist[i:i + 1], seq), dim=-1)  # 1 x d x (kw - 1 + l)
        outs = []
        for dir in range(k):
            xs = seq if dir == 0 else seq.flip(-1)
            conv = torch.nn.functional.conv1d(xs, weight.view(k, d, 1, kw)[dir], bias.view(k, d)[dir],
                                              padding=kw - 1, groups=d)[..., :xs.shape[-1]]  # causal
            conv = conv[..., xs.shape[-1] - (t1 - t0):] if dir == 0 else conv[..., :t1 - t0].flip(-1)  # 1 x d x l
            outs.append(conv[0].t())  # l x d
        us.append(torch.stack(outs))  # k x l x d
        padded = torch.cat((seq.new_zeros(1, d, kw - 1), seq), dim=-1)  # zero tokens before an empty history
        hists.append(padded[0, :, -(kw - 1):])  # d x (kw - 1)
    u = torch.nn.functional.silu(torch.cat(us, dim=1))  # k x T x d
    return u, (torch.stack(hists) if want_hist else None)


def gated_scan(u: Tensor, xdbl: Tensor, offsets: Sequences, dt_proj_t: Tensor, dt_bias: Tensor, A_t: Tensor,
               D: Tensor, z: Tensor, h0: Tensor | None = None, want_last: bool = False) -> tuple[Tensor, Tensor | None]:
    """Inference only (no autograd): the gated selective scan of an ``SSMMixer`` after its conv
    and x_proj, for k = 1 or 2 directions, in one kernel call (``gated_scan_ref`` is the same in
    PyTorch). Channel-last shapes (T tokens cut into s sequences by ``offsets`` as in ``conv_silu``,
    d channels, n states, r = dt rank)::

        u:    k x T x d            conv + SiLU output of each direction, in scan order (direction 1 runs backwards)
        xdbl: k x T x (r+2n)       x_proj output: dt_low, B, C, in scan order
        dt_proj_t k x r x d (dt_proj_weight transposed), dt_bias k*d, D k*d
        A_t:  k x n x d            A = -exp(A_log) of each direction, transposed (state-major)
        z:    T x d                the gate, in token order (rows may be strided: a slice of in_proj's output)
        h0:   s x n x d or None    initial states, state-major (k = 1 only); want_last: return the last states

    delta = softplus(dt_low @ dt_proj_t + dt_bias); h_t = exp(delta_t A) h_{t-1} + delta_t
    B_t u_t; returns y = (sum over directions of C_t . h_t + D u_t) * silu(z), T x d in token order, and the
    last states s x n x d (k = 1 and want_last) or None.
    """
    lib = _kernel()
    k, T, d = u.shape
    n, r = A_t.shape[1], dt_proj_t.shape[1]
    s = _check_sequences(offsets, T)
    if k == 2 and (h0 is not None or want_last):
        raise ValueError("gated_scan: a carried state (h0 / want_last) needs a single direction (k = 1)")
    if tuple(A_t.shape) != (k, n, d):
        raise ValueError(f"gated_scan: A_t must be k x n x d = {k} x {n} x {d}, got {tuple(A_t.shape)}")
    if tuple(z.shape) != (T, d) or tuple(xdbl.shape) != (k, T, r + 2 * n):
        raise ValueError(f"gated_scan: z must be T x d = {T} x {d} and xdbl k x T x (r + 2n) = {k} x {T} x {r + 2 * n}, "
                         f"got {tuple(z.shape)} and {tuple(xdbl.shape)}")
    z, z_row_stride = _rows(z)
    u, xdbl, dt_proj_t, dt_bias, A_t, D = (t.contiguous() for t in (u, xdbl, dt_proj_t, dt_bias, A_t, D))
    h0 = None if h0 is None else h0.contiguous()
    y = u.new_empty(T, d)
    last = u.new_empty(s, n, d) if want_last else None
    _check_memory(_typed(lib, "vgated_scan", u.dtype)(
        _ptr(u), _ptr(xdbl), _ptr(dt_proj_t), _ptr(dt_bias), _ptr(A_t), _ptr(D), _ptr(z), z_row_stride,
        _ptr(offsets.offsets), _ptr(offsets.order), _ptr(h0), _ptr(last), _ptr(y), s, k, T, d, n, r, torch.get_num_threads(),
    ), "gated scan", u)
    return y, last


def gated_scan_ref(u: Tensor, xdbl: Tensor, offsets: Sequences, dt_proj_t: Tensor, dt_bias: Tensor, A_t: Tensor,
                   D: Tensor, z: Tensor, h0: Tensor | None = None, want_last: bool = False) -> tuple[Tensor, Tensor | None]:
    """``gated_scan`` in plain PyTorch, one sequence and one time step at a time (the ground truth in tests)."""
    k, T, d = u.shape
    n, r = A_t.shape[1], dt_proj_t.shape[1]
    dt_low, B, C = xdbl.split((r, n, n), dim=-1)  # k x T x r, k x T x n, k x T x n
    delta = torch.nn.functional.softplus(torch.bmm(dt_low, dt_proj_t) + dt_bias.view(k, 1, d))  # k x T x d
    A, D = A_t.transpose(1, 2), D.view(k, d)  # k x d x n, k x d
    if offsets.order is not None:
        z = z[offsets.order]  # T x d, in scan order
    y = u.new_zeros(T, d)  # in scan order
    lasts = []
    for i, (t0, t1) in enumerate(offsets.bounds()):
        for dir in range(k):
            h = h0[i].t() if h0 is not None else u.new_zeros(d, n)  # d x n
            for t in (range(t0, t1) if dir == 0 else reversed(range(t0, t1))):
                h = torch.exp(delta[dir, t, :, None] * A[dir]) * h + (delta[dir, t] * u[dir, t])[:, None] * B[dir, t]
                y[t] += (h * C[dir, t]).sum(-1) + D[dir] * u[dir, t]
        lasts.append(h.t())  # n x d, state-major
    y = y * torch.nn.functional.silu(z)
    if offsets.order is not None:
        y = torch.empty_like(y).index_copy_(0, offsets.order, y)  # back to token order
    return y, (torch.stack(lasts) if want_last else None)
