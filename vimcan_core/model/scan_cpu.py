"""A fused selective-scan kernel for the CPU, in plain C, compiled on first use.

The chunked PyTorch scan (``scan.py``) is vectorised but memory-bound: every step of its
closed form reads and writes a whole b x l x d x n tensor, about forty passes for a forward
and backward. This kernel runs the recurrence itself, one (batch, channel) row per OpenMP
iteration, with the n-dimensional state in registers: it reads u, delta, B, C once and
recomputes the states in the backward pass from h0 (nothing b x d x l x n is ever stored).
The exponentials vectorise over n (``-ffast-math`` with ``#pragma omp simd``).

It is compiled with the system C compiler (``cc -O3 -ffast-math -fopenmp``, linked without
fast-math so that loading it leaves the process's floating-point mode alone) into
``~/.cache/vimcan/`` (or ``$VIMCAN_CACHE_DIR``) the first time it is needed, a second or two,
and loaded with ctypes. When no compiler is found or the build fails, ``load_kernel()``
returns None and the scan uses the chunked backend (the reason is logged once).

Same semantics and argument shapes as ``scan._ChunkedScan`` (after delta_bias/softplus):
u, delta b x d x l; A d x n; B, C b x g x n x l; h0 b x d x n -> y b x d x l, last b x d x n.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: largest state size the kernel takes (its per-row state lives on the stack)
MAX_STATE = 256

_TEMPLATE = r"""
void vscan_fwd_SUF(const REAL* u, const REAL* delta, const REAL* A, const REAL* Bt, const REAL* Ct,
                   const REAL* h0, REAL* y, REAL* last, long b, long d, long l, long n, long g, int nthreads) {
    long dg = d / g;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long row = 0; row < b * d; row++) {
        long bi = row / d, di = row % d, gi = di / dg;
        const REAL* Ad = A + di * n;
        const REAL* Bb = Bt + (bi * g + gi) * l * n;   /* l x n */
        const REAL* Cb = Ct + (bi * g + gi) * l * n;
        const REAL* ur = u + row * l;
        const REAL* dr = delta + row * l;
        REAL h[MAXN];
        for (long k = 0; k < n; k++) h[k] = h0 ? h0[row * n + k] : 0;
        for (long t = 0; t < l; t++) {
            REAL dt = dr[t], du = dt * ur[t], acc = 0;
            const REAL* Bq = Bb + t * n;
            const REAL* Cq = Cb + t * n;
            #pragma omp simd reduction(+:acc)
            for (long k = 0; k < n; k++) {
                h[k] = EXP(dt * Ad[k]) * h[k] + du * Bq[k];
                acc += h[k] * Cq[k];
            }
            y[row * l + t] = acc;
        }
        if (last)
            for (long k = 0; k < n; k++) last[row * n + k] = h[k];
    }
}

/* gA, gBt, gCt must be zeroed by the caller; h0, glast and gh0 may be NULL (zero state, no
   gradient into the last state, initial state gradient not wanted). */
void vscan_bwd_SUF(const REAL* u, const REAL* delta, const REAL* A, const REAL* Bt, const REAL* Ct,
                   const REAL* h0, const REAL* gy, const REAL* glast,
                   REAL* gu, REAL* gdelta, REAL* gA, REAL* gBt, REAL* gCt, REAL* gh0,
                   long b, long d, long l, long n, long g, int nthreads) {
    long dg = d / g;
    REAL* gA_thr = (REAL*)calloc((size_t)nthreads * d * n, sizeof(REAL));
    #pragma omp parallel num_threads(nthreads)
    {
        int tid = omp_get_thread_num();
        REAL* hs = (REAL*)malloc(sizeof(REAL) * l * n);
        REAL* as = (REAL*)malloc(sizeof(REAL) * l * n);
        REAL* gAl = gA_thr + (size_t)tid * d * n;
        /* one task per (batch, group): the rows of a group share B and C, so their gradients
           are accumulated by one thread without races */
        #pragma omp for schedule(dynamic)
        for (long task = 0; task < b * g; task++) {
            long bi = task / g, gi = task % g;
            const REAL* Bb = Bt + task * l * n;
            const REAL* Cb = Ct + task * l * n;
            REAL* gBb = gBt + task * l * n;
            REAL* gCb = gCt + task * l * n;
            for (long dj = 0; dj < dg; dj++) {
                long di = gi * dg + dj, row = bi * d + di;
                const REAL* Ad = A + di * n;
                const REAL* ur = u + row * l;
                const REAL* dr = delta + row * l;
                REAL h[MAXN], gh[MAXN], h0r[MAXN];
                for (long k = 0; k < n; k++) h0r[k] = h0 ? h0[row * n + k] : 0;
                for (long k = 0; k < n; k++) h[k] = h0r[k];
                for (long t = 0; t < l; t++) {  /* recompute the states */
                    REAL dt = dr[t], du = dt * ur[t];
                    const REAL* Bq = Bb + t * n;
                    #pragma omp simd
                    for (long k = 0; k < n; k++) {
                        REAL a = EXP(dt * Ad[k]);
                        as[t * n + k] = a;
                        h[k] = a * h[k] + du * Bq[k];
                        hs[t * n + k] = h[k];
                    }
                }
                for (long k = 0; k < n; k++) gh[k] = glast ? glast[row * n + k] : 0;
                for (long t = l - 1; t >= 0; t--) {  /* adjoint recurrence */
                    REAL gyt = gy[row * l + t], dt = dr[t], ut = ur[t], du = dt * ut;
                    const REAL* Bq = Bb + t * n;
                    const REAL* Cq = Cb + t * n;
                    REAL* gBq = gBb + t * n;
                    REAL* gCq = gCb + t * n;
                    const REAL* hp = t > 0 ? hs + (t - 1) * n : h0r;
                    const REAL* ht = hs + t * n;
                    const REAL* at = as + t * n;
                    REAL* gAd = gAl + di * n;
                    REAL gdu = 0, gdA_A = 0;
                    #pragma omp simd reduction(+:gdu, gdA_A)
                    for (long k = 0; k < n; k++) {
                        REAL ghk = gh[k] + gyt * Cq[k];   /* dL/dh_t */
                        gCq[k] += gyt * ht[k];
                        gBq[k] += ghk * du;
                        gdu += ghk * Bq[k];
                        REAL gdA = ghk * at[k] * hp[k];   /* dL/d(delta_t A) */
                        gdA_A += gdA * Ad[k];
                        gAd[k] += gdA * dt;
                        gh[k] = ghk * at[k];               /* dL/dh_{t-1} through h_t */
                    }
                    gdelta[row * l + t] = gdA_A + gdu * ut;
                    gu[row * l + t] = gdu * dt;
                }
                if (gh0)
                    for (long k = 0; k < n; k++) gh0[row * n + k] = gh[k];
            }
        }
        free(hs);
        free(as);
    }
    for (int t = 0; t < nthreads; t++)
        for (long i = 0; i < d * n; i++) gA[i] += gA_thr[(size_t)t * d * n + i];
    free(gA_thr);
}
"""

_HEADER = "#include <math.h>\n#include <stdlib.h>\n#include <omp.h>\n"


def _source() -> str:
    parts = [_HEADER, f"#define MAXN {MAX_STATE}\n"]
    for real, suf, exp in (("float", "f32", "expf"), ("double", "f64", "exp")):
        parts.append(_TEMPLATE.replace("REAL", real).replace("SUF", suf).replace("EXP", exp))
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
        getattr(lib, f"vscan_fwd_{suf}").argtypes = [p] * 8 + [i64] * 5 + [i32]
        getattr(lib, f"vscan_bwd_{suf}").argtypes = [p] * 14 + [i64] * 5 + [i32]
    return lib


def kernel_supports(u: Tensor, n: int) -> bool:
    """True when the kernel can run these tensors (CPU, float32/64, state size <= MAX_STATE)."""
    return (u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64) and n <= MAX_STATE
            and load_kernel() is not None)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class KernelScan(torch.autograd.Function):
    """The scan through the C kernel; inputs as ``scan._ChunkedScan``."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
                want_last: bool = True):  # noqa: D401
        """h0 None: zero initial state; want_last False: ``last`` comes back empty (not computed)."""
        lib = load_kernel()
        b, d, l = u.shape
        g, n = B.shape[1], B.shape[2]
        u, delta, A = (t.contiguous() for t in (u, delta, A))
        h0 = None if h0 is None else h0.contiguous()
        Bt = B.transpose(-1, -2).contiguous()  # b x g x l x n
        Ct = C.transpose(-1, -2).contiguous()
        y = torch.empty_like(u)
        last = u.new_empty(b, d, n) if want_last else u.new_empty(0)
        suf = "f32" if u.dtype == torch.float32 else "f64"
        getattr(lib, f"vscan_fwd_{suf}")(
            _ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(h0), _ptr(y), _ptr(last) if want_last else None,
            b, d, l, n, g, torch.get_num_threads(),
        )
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(u, delta, A, Bt, Ct, h0 if h0 is not None else u.new_empty(0))
        return y, last

    @staticmethod
    def backward(ctx, gy: Tensor, glast: Tensor):
        lib = load_kernel()
        u, delta, A, Bt, Ct, h0 = ctx.saved_tensors
        h0 = h0 if ctx.has_h0 else None
        b, d, l = u.shape
        g, n = Bt.shape[1], Bt.shape[3]
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        glast = None if glast is None or glast.numel() == 0 else glast.contiguous()
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)
        gA = torch.zeros_like(A)
        gBt, gCt = torch.zeros_like(Bt), torch.zeros_like(Ct)
        want_gh0 = h0 is not None and ctx.needs_input_grad[5]
        gh0 = torch.empty_like(h0) if want_gh0 else None
        suf = "f32" if u.dtype == torch.float32 else "f64"
        getattr(lib, f"vscan_bwd_{suf}")(
            _ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(h0), _ptr(gy), _ptr(glast),
            _ptr(gu), _ptr(gdelta), _ptr(gA), _ptr(gBt), _ptr(gCt), _ptr(gh0),
            b, d, l, n, g, torch.get_num_threads(),
        )
        return gu, gdelta, gA, gBt.transpose(-1, -2), gCt.transpose(-1, -2), gh0, None
