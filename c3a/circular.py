"""Block-circular matrix products via real FFTs (the C3A operator).

`block_circular(x, w)` computes `x @ C(w)^T`, where C(w) is the (m*p, n*p) matrix whose
block (i, j) is the p x p circulant `C_ij[r][c] = w[i, j, (c - r) mod p]`. Per block that is a
circular cross-correlation, so in the frequency domain (rfft over p) it is a per-frequency
(m x n) complex matrix product: O(T * d * (log p + n)) instead of the dense O(T * d^2).

The backward is a custom autograd Function with exact gradients (see docs/METHODS.md, "C3A").
PEFT's reference implementation returns a wrong input gradient for p >= 3; it is reproduced
only on request (`reference_grad=True`) for comparisons with published numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.fft import irfft, rfft

__all__ = ["block_circular", "circulant_matrix"]


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: CPU torch has no bf16 FFT and fp16 FFT is
    CUDA-only (and power-of-two only), so lower precisions are computed in float32."""
    if any(t.is_complex() or not t.is_floating_point() for t in tensors):
        raise TypeError(f"block_circular needs real floating tensors, got {[t.dtype for t in tensors]}")
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _freq_major(s: Tensor) -> Tensor:
    """(T, c, F) spectrum -> contiguous (F, T, c), in one copy.

    bmm with frequency as the batch dimension is the fast way to mix blocks on CPU, but it
    copies every non-BLAS-compatible matrix separately; one explicit copy is far cheaper.
    """
    return s.permute(2, 0, 1).contiguous()


def _irfft_freq_major(s: Tensor, p: int, conj: bool = False) -> Tensor:
    """(F, T, c) spectrum -> (T, c, p) signal; a contiguous copy first beats a strided c2r,
    and the copy resolves a conjugation for free."""
    return irfft((s.conj() if conj else s).permute(1, 2, 0).contiguous(), n=p)


def _mix(a: Tensor, k: Tensor) -> Tensor:
    """Per-frequency complex product a @ k for a (F, T, n) and k (F, n, m), as a real bmm.

    With k's (n x m) complex entries expanded to 2x2 real blocks [[re, im], [-im, re]] the
    product acts on view_as_real(a) directly; MKL's real GEMM is ~3x faster than its
    complex one at these skinny shapes (inner dimension n = 6 for C3A b=6).
    """
    f, n, m = k.shape
    re, im = k.real, k.imag
    k_real = torch.stack((torch.stack((re, im), -1), torch.stack((-im, re), -1)), 2)  # (F, n, 2, m, 2)
    out = torch.bmm(torch.view_as_real(a).reshape(f, -1, 2 * n), k_real.reshape(f, 2 * n, 2 * m))
    return torch.view_as_complex(out.reshape(f, -1, m, 2))


def _gram_rows(t: int, cuda: bool) -> int:
    """Tokens per partial product in `_conj_gram`. cuBLAS runs one (2m x T) @ (T x 2n) product
    per frequency on very few thread blocks (0.55 ms, 40 % of the whole b=6 operator at 16384
    tokens on an H100); summing products over chunks of T restores parallelism. MKL prefers
    the single long product. A divisor of T keeps the chunking a free view."""
    if cuda:
        for rows in range(256, 31, -1):
            if t % rows == 0:
                return rows
    return t


def _conj_gram(a: Tensor, b: Tensor, rows: int | None = None) -> Tensor:
    """Per-frequency conj(a)^T @ b summed over tokens, a (F, T, m), b (F, T, n) -> (F, m, n),
    via real bmm of the interleaved (re, im) views over chunks of `rows` tokens (a divisor of
    T; default `_gram_rows`), summed."""
    f, t, m = a.shape
    n = b.shape[-1]
    rows = rows or _gram_rows(t, a.is_cuda)
    g = torch.bmm(torch.view_as_real(a).reshape(-1, rows, 2 * m).transpose(1, 2),
                  torch.view_as_real(b).reshape(-1, rows, 2 * n))
    g = g.reshape(f, t // rows, m, 2, n, 2).sum(1)
    # conj(ar + i ai) (br + i bi) = (ar br + ai bi) + i (ar bi - ai br)
    return torch.complex(g[:, :, 0, :, 0] + g[:, :, 1, :, 1], g[:, :, 0, :, 1] - g[:, :, 1, :, 0])


class _BlockCircular(torch.autograd.Function):
    """x (..., n*p) -> x @ C(w)^T (..., m*p), computed and differentiated in the frequency domain.

    Per frequency f the forward is Y_f = X_f K_f with K_f[j, i] = conj(W_ij[f]); the kernel
    gradient is conj(G_f)^T X_f and the input gradient G_f W_f. One block per side (n = m = 1,
    C3A "b=1") needs no mixing, only a broadcast multiply, done in place.

    Saves the caller's x, not its spectrum: query and value read the same hidden states, so
    saving x costs one tensor per transformer layer (as LoRA, which saves x too), whereas a
    spectrum would be one per adapted layer (+5.7 % saved activations for RoBERTa-base C3A
    b=6, see docs/benchmarks_c3a.md). The backward recomputes rfft(x) instead.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, reference_grad: bool) -> Tensor:  # type: ignore[override]
        m, n, p = w.shape
        dtype = _compute_dtype(x, w)
        w_f = rfft(w.to(dtype))  # (m, n, F)
        x_f = rfft(x.to(dtype).reshape(-1, n, p))  # (T, n, F)
        if m == n == 1:
            y = irfft(x_f.mul_(w_f[0, 0].conj()), n=p)
        else:
            y = _irfft_freq_major(_mix(_freq_major(x_f), w_f.conj().permute(2, 1, 0)), p)
        ctx.save_for_backward(x, w_f)
        ctx.reference_grad = reference_grad
        ctx.w_dtype = w.dtype
        return y.reshape(*x.shape[:-1], m * p)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, w_f = ctx.saved_tensors
        m, n, _ = w_f.shape
        p = x.shape[-1] // n
        dtype = w_f.real.dtype
        g_f = rfft(grad_out.to(dtype).reshape(-1, m, p))  # (T, m, F)
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x = grad_w = None
        # exact input gradient: dx_j = irfft(sum_i G_i W_ij); PEFT's: irfft(sum_i conj(G_i) W_ij)
        if m == n == 1:
            if need_w:
                x_f = rfft(x.to(dtype).reshape(-1, 1, p))
                grad_w = irfft(x_f.mul_(g_f.conj()).sum(0, keepdim=True), n=p)
            if need_x:
                w0 = w_f[0, 0]
                grad_x = irfft(g_f.conj() * w0 if ctx.reference_grad else g_f.mul_(w0), n=p)
        else:
            g_fm = _freq_major(g_f)  # (F, T, m)
            if need_w:
                x_fm = _freq_major(rfft(x.to(dtype).reshape(-1, n, p)))
                grad_w = irfft(_conj_gram(g_fm, x_fm).permute(1, 2, 0), n=p)
            if need_x:
                # reference: conj(G) @ W = conj(G @ conj(W))
                w_k = (w_f.conj() if ctx.reference_grad else w_f).permute(2, 0, 1)  # (F, m, n)
                grad_x = _irfft_freq_major(_mix(g_fm, w_k), p, conj=ctx.reference_grad)
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        if grad_w is not None:
            grad_w = grad_w.to(ctx.w_dtype)
        return grad_x, grad_w, None


def block_circular(x: Tensor, w: Tensor, reference_grad: bool = False) -> Tensor:
    """Return `x @ C(w)^T` for a kernel w of shape (m, n, p) and x of shape (..., n*p).

    Output (..., m*p), in float32 (float64 if x or w is float64); no 1/d_in scaling.
    `reference_grad=True` reproduces PEFT's input gradient, which is wrong for p >= 3 (kept
    only to compare with results obtained with PEFT); the kernel gradient is exact either way.
    """
    if w.dim() != 3:
        raise ValueError(f"kernel must have shape (m, n, p), got {tuple(w.shape)}")
    _, n, p = w.shape
    if x.dim() == 0 or x.shape[-1] != n * p:
        raise ValueError(f"input last dim must be n*p = {n}*{p} = {n * p}, got shape {tuple(x.shape)}")
    if x.numel() == 0:  # MKL rejects empty FFTs; the dense product is free here
        dtype = _compute_dtype(x, w)
        return x.to(dtype) @ circulant_matrix(w.to(dtype)).T
    return _BlockCircular.apply(x, w, reference_grad)


def circulant_matrix(w: Tensor) -> Tensor:
    """Dense block-circulant C(w) of shape (m*p, n*p), in w's dtype, differentiable.

    Built by indexing (one gather of d_out*d_in entries), for merging C/d_in into a base
    weight; exact in any dtype, unlike an FFT round trip.
    """
    m, n, p = w.shape
    r = torch.arange(p, device=w.device)
    idx = (r[None, :] - r[:, None]) % p  # idx[r][c] = (c - r) mod p
    return w[:, :, idx].permute(0, 2, 1, 3).reshape(m * p, n * p)
