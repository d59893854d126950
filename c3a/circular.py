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

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.fft import irfft, rfft

__all__ = ["block_circular", "block_circular_shared", "circulant_matrix"]


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
    """x (..., n*p) -> one x @ C(w)^T per kernel w (m_i, n, p), in the frequency domain.

    Per frequency f the forward is Y_f = X_f K_f with K_f[j, i] = conj(W_ij[f]); the kernel
    gradient is conj(G_f)^T X_f and the input gradient G_f W_f. Kernels reading the same
    input are stacked along the output side (M = sum m_i), so the input costs one FFT in the
    forward and one mixing product and one inverse FFT in the backward, whatever the number
    of kernels (query and value of an attention block, see `c3a.c3a_layer.SharedInput`).
    One block per input (n = 1, C3A "b=1") needs no mixing, only broadcast products.

    Computed in float32 (float64 for float64 inputs) under any autocast: the spectra and the
    per-frequency mixing products would lose most of their digits in bf16/fp16.

    Saves the input's spectrum (frequency-major when n > 1), not x: the backward then needs
    neither an FFT of x nor a transpose. In float32 the spectrum is (p + 2) / p times the size
    of x, so shared kernels save about what LoRA does (x, once); bf16/fp16 inputs save twice
    their own size.
    """

    @staticmethod
    def forward(ctx, x: Tensor, reference_grad: bool, *kernels: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        with torch.autocast(x.device.type, enabled=False):  # autocast would run the mixing bmm in bf16/fp16
            return _BlockCircular._forward(ctx, x, reference_grad, *kernels)

    @staticmethod
    def _forward(ctx, x: Tensor, reference_grad: bool, *kernels: Tensor) -> tuple[Tensor, ...]:
        n, p = kernels[0].shape[1:]
        ms = [w.shape[0] for w in kernels]
        dtype = _compute_dtype(x, *kernels)
        w_f = rfft(torch.cat([w.to(dtype) for w in kernels]))  # (M, n, F)
        x_f = rfft(x.to(dtype).reshape(-1, n, p))  # (T, n, F)
        if n == 1:
            ys = [irfft(x_f * w[:, 0].conj(), n=p) for w in w_f.split(ms)]  # (T, m_i, p) each
        else:
            x_f = _freq_major(x_f)  # (F, T, n)
            ys = [_irfft_freq_major(y, p) for y in _mix(x_f, w_f.conj().permute(2, 1, 0)).split(ms, dim=2)]
        ctx.save_for_backward(x_f, w_f)
        ctx.meta = (x.shape, x.dtype, [w.dtype for w in kernels], ms, reference_grad)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no FFT of zeros
        return tuple(y.reshape(*x.shape[:-1], m * p) for y, m in zip(ys, ms))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_f, w_f = ctx.saved_tensors  # once: checkpointing lets saved tensors be unpacked once only
        with torch.autocast(x_f.device.type, enabled=False):  # a backward run under autocast
            return _BlockCircular._backward(ctx, x_f, w_f, *grads)

    @staticmethod
    def _backward(ctx, x_f: Tensor, w_f: Tensor, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        shape, x_dtype, w_dtypes, ms, reference_grad = ctx.meta
        n = w_f.shape[1]
        p = shape[-1] // n
        dtype = w_f.real.dtype
        need_x, need_w = ctx.needs_input_grad[0], any(ctx.needs_input_grad[2:])

        def spectrum(g: Tensor, m: int) -> Tensor:  # (T, m, F)
            return rfft(g.to(dtype).reshape(-1, m, p))

        # exact input gradient: dx_j = irfft(sum_i G_i W_ij); PEFT's: irfft(sum_i conj(G_i) W_ij)
        if n == 1:  # per kernel, in place on its own gradient spectrum: no mixing, no copies
            grad_w, grad_x = torch.zeros_like(w_f), None  # (M, 1, F); (T, 1, F)
            for g, w, gw in zip(grads, w_f.split(ms), grad_w.split(ms)):
                if g is None:
                    continue
                g = spectrum(g, w.shape[0])
                if need_w:
                    gw[:, 0] = (g.conj() * x_f).sum(0)
                if need_x:
                    g = g.conj() * w[:, 0] if reference_grad else g.mul_(w[:, 0])
                    g = g.sum(1, keepdim=True) if g.shape[1] > 1 else g
                    grad_x = g if grad_x is None else grad_x.add_(g)
            if need_x:
                grad_x = irfft(torch.zeros_like(x_f) if grad_x is None else grad_x, n=p)
        else:
            g_f = x_f.new_empty(*x_f.shape[:2], sum(ms))  # (F, T, M)
            for g, part in zip(grads, g_f.split(ms, dim=2)):
                part.zero_() if g is None else part.copy_(spectrum(g, part.shape[2]).permute(2, 0, 1))
            grad_w = _conj_gram(g_f, x_f).permute(1, 2, 0) if need_w else None  # (M, n, F)
            if need_x:  # reference: conj(G) @ W = conj(G @ conj(W))
                w_k = (w_f.conj() if reference_grad else w_f).permute(2, 0, 1)  # (F, M, n)
                grad_x = _irfft_freq_major(_mix(g_f, w_k), p, conj=reference_grad)
        grad_x = grad_x.reshape(shape).to(x_dtype) if need_x else None
        grad_ws = [None] * len(ms)
        if need_w:
            grad_ws = [g.to(d) for g, d in zip(irfft(grad_w, n=p).split(ms), w_dtypes)]
        return grad_x, None, *grad_ws


def block_circular(x: Tensor, w: Tensor, reference_grad: bool = False) -> Tensor:
    """Return `x @ C(w)^T` for a kernel w of shape (m, n, p) and x of shape (..., n*p).

    Output (..., m*p), in float32 (float64 if x or w is float64); no 1/d_in scaling.
    `reference_grad=True` reproduces PEFT's input gradient, which is wrong for p >= 3 (kept
    only to compare with results obtained with PEFT); the kernel gradient is exact either way.
    """
    return block_circular_shared(x, [w], reference_grad)[0]


def block_circular_shared(x: Tensor, kernels: Sequence[Tensor], reference_grad: bool = False) -> tuple[Tensor, ...]:
    """`block_circular(x, w)` for every w in `kernels` (shapes (m_i, n, p), same n and p), in
    one operator: the input's FFT, the input gradient's mixing and inverse FFT and the saved
    spectrum are shared, so two kernels cost much less than two calls."""
    if not kernels or any(w.dim() != 3 for w in kernels):
        raise ValueError(f"kernels must have shape (m, n, p), got {[tuple(w.shape) for w in kernels]}")
    _, n, p = kernels[0].shape
    if any(w.shape[1:] != (n, p) for w in kernels):
        raise ValueError(f"kernels sharing an input need the same (n, p), got {[tuple(w.shape) for w in kernels]}")
    if x.dim() == 0 or x.shape[-1] != n * p:
        raise ValueError(f"input last dim must be n*p = {n}*{p} = {n * p}, got shape {tuple(x.shape)}")
    if x.numel() == 0:  # MKL rejects empty FFTs; the dense product is free here
        dtype = _compute_dtype(x, *kernels)
        return tuple(x.to(dtype) @ circulant_matrix(w.to(dtype)).T for w in kernels)
    return _BlockCircular.apply(x, reference_grad, *kernels)


def circulant_matrix(w: Tensor) -> Tensor:
    """Dense block-circulant C(w) of shape (m*p, n*p), in w's dtype, differentiable.

    Built by indexing (one gather of d_out*d_in entries), for merging C/d_in into a base
    weight; exact in any dtype, unlike an FFT round trip.
    """
    m, n, p = w.shape
    r = torch.arange(p, device=w.device)
    idx = (r[None, :] - r[:, None]) % p  # idx[r][c] = (c - r) mod p
    return w[:, :, idx].permute(0, 2, 1, 3).reshape(m * p, n * p)
