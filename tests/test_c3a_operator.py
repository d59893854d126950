"""The block-circular operator against a dense float64 reference built from the definition,
and against PEFT's reference implementation (forward, and its defective input gradient)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import C3AConfig, get_peft_model
from peft.tuners.c3a.utils import BlockCircularConvolution, get_circulant_fast
from transformers import BertConfig, BertModel

from c3a.c3a_layer import C3ALinear
from c3a.circular import block_circular, block_circular_shared, circulant_matrix
from c3a.modules import replace_linears


def dense_reference(w: torch.Tensor) -> torch.Tensor:
    """C(w) entry by entry: block (i, j) row r column c is w[i, j, (c - r) mod p]."""
    m, n, p = w.shape
    c = torch.empty(m * p, n * p, dtype=w.dtype)
    for i in range(m):
        for j in range(n):
            for r in range(p):
                for col in range(p):
                    c[i * p + r, j * p + col] = w[i, j, (col - r) % p]
    return c


def dense_index_reference(w: torch.Tensor) -> torch.Tensor:
    """Same definition by index arithmetic on the flat (row, col) grid (for large p)."""
    m, n, p = w.shape
    rows = torch.arange(m * p)[:, None]
    cols = torch.arange(n * p)[None, :]
    return w[rows // p, cols // p, (cols % p - rows % p) % p]


def assert_close_rel(got: torch.Tensor, ref: torch.Tensor, rel: float = 2e-5) -> None:
    """Max error relative to the reference's scale (float32 FFT vs float64 dense)."""
    err = (got.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} * {scale:.3g}"


def float64_grads(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor):
    """Output and autograd gradients of x @ C(w)^T in float64 via the dense reference."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    y = x64 @ dense_index_reference(w64).T
    y.backward(g.double())
    return y.detach(), x64.grad, w64.grad


@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (2, 3, 1), (1, 1, 2), (1, 1, 3), (2, 3, 5), (3, 2, 12), (2, 2, 7)])
def test_circulant_matrix_matches_definition(m: int, n: int, p: int) -> None:
    w = torch.randn(m, n, p, dtype=torch.float64)
    assert torch.equal(circulant_matrix(w), dense_reference(w))
    assert torch.equal(dense_index_reference(w), dense_reference(w))
    assert torch.equal(circulant_matrix(w.float()), dense_reference(w).float())


@pytest.mark.parametrize(
    "m,n,p,lead",
    [
        (1, 1, 1, (5,)),
        (2, 3, 1, (2, 3)),
        (1, 1, 3, ()),
        (2, 3, 5, (2, 3)),
        (3, 2, 12, (4,)),
        (1, 1, 128, (3, 2)),
        (2, 3, 128, (4,)),
        (6, 6, 128, (2, 5)),
        (1, 1, 768, (2, 3)),
        (2, 1, 768, ()),
    ],
)
def test_forward_and_gradients_match_dense_float64(m: int, n: int, p: int, lead: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(*lead, n * p, requires_grad=True)
    w = torch.randn(m, n, p, requires_grad=True)
    g = torch.randn(*lead, m * p)
    y = block_circular(x, w)
    y.backward(g)
    y_ref, gx_ref, gw_ref = float64_grads(x, w, g)
    assert y.shape == (*lead, m * p) and y.dtype == torch.float32
    assert x.grad.dtype == w.grad.dtype == torch.float32
    assert_close_rel(y, y_ref)
    assert_close_rel(x.grad, gx_ref)
    assert_close_rel(w.grad, gw_ref)


@pytest.mark.parametrize("ms,n,p", [((1, 1), 1, 5), ((2, 1, 3), 1, 12), ((6, 6), 6, 128), ((1, 3, 2), 3, 5),
                                    ((2, 2), 1, 768)])
@pytest.mark.parametrize("unused", [None, 1])
def test_shared_kernels_match_dense_float64(ms: tuple[int, ...], n: int, p: int, unused: int | None) -> None:
    """Several kernels on one input, in one call: each output and every gradient equals its own
    dense float64 product; an output that takes no part in the loss gives its kernel a zero
    gradient and the input gradient only the others' terms."""
    torch.manual_seed(7)
    x = torch.randn(3, 4, n * p, requires_grad=True)
    ws = [torch.randn(m, n, p, requires_grad=True) for m in ms]
    gs = [torch.randn(3, 4, m * p) for m in ms]
    ys = block_circular_shared(x, ws)
    used = [i for i in range(len(ms)) if i != unused]
    torch.autograd.backward([ys[i] for i in used], [gs[i] for i in used])
    gx_ref = torch.zeros(x.shape, dtype=torch.float64)
    for i, (y, w, g) in enumerate(zip(ys, ws, gs)):
        y_ref, gx_i, gw_ref = float64_grads(x, w, g)
        assert y.shape == (3, 4, ms[i] * p)
        assert_close_rel(y, y_ref)
        if i == unused:
            assert torch.equal(w.grad, torch.zeros_like(w))
        else:
            assert_close_rel(w.grad, gw_ref)
            gx_ref += gx_i
    assert_close_rel(x.grad, gx_ref)


@pytest.mark.parametrize("n,p", [(1, 12), (2, 6)])
def test_shared_kernels_reference_grad_equals_separate_calls(n: int, p: int) -> None:
    torch.manual_seed(8)
    x = torch.randn(5, n * p, requires_grad=True)
    ws = [torch.randn(m, n, p, requires_grad=True) for m in (2, 1)]
    gs = [torch.randn(5, m * p) for m in (2, 1)]
    shared = torch.autograd.grad(block_circular_shared(x, ws, reference_grad=True), (x, *ws), gs)
    separate = torch.autograd.grad([block_circular(x, w, reference_grad=True) for w in ws], (x, *ws), gs)
    for a, b in zip(shared, separate):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_shared_kernels_need_one_input_shape() -> None:
    with pytest.raises(ValueError, match="same \\(n, p\\)"):
        block_circular_shared(torch.randn(5, 12), [torch.randn(2, 3, 4), torch.randn(2, 2, 6)])
    with pytest.raises(ValueError, match="m, n, p"):
        block_circular_shared(torch.randn(5, 12), [])


@pytest.mark.parametrize("m,n,p", [(2, 3, 5), (1, 1, 12)])
def test_non_contiguous_inputs(m: int, n: int, p: int) -> None:
    torch.manual_seed(1)
    big = torch.randn(4, 3, 2 * n * p, requires_grad=True)
    views = [big.transpose(0, 1)[..., ::2], big[:, 1:, n * p:].transpose(0, 1)]
    w = torch.randn(m, n, p, requires_grad=True)
    for x in views:
        assert not x.is_contiguous()
        g = torch.randn(*x.shape[:-1], m * p)
        gx, gw = torch.autograd.grad(block_circular(x, w), (x, w), g)
        y_ref, gx_ref, gw_ref = float64_grads(x, w, g)
        assert_close_rel(block_circular(x, w), y_ref)
        assert_close_rel(gx, gx_ref)
        assert_close_rel(gw, gw_ref)


def test_float64_inputs_stay_float64_and_exact() -> None:
    torch.manual_seed(2)
    x = torch.randn(3, 2 * 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 12, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 3 * 12, dtype=torch.float64)
    y = block_circular(x, w)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    y_ref, gx_ref, gw_ref = float64_grads(x, w, g)
    assert y.dtype == gx.dtype == gw.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: block_circular(a, b), (x[:1], w), fast_mode=True)


def test_bf16_input_computes_in_float32_and_returns_bf16_grad() -> None:
    x = torch.randn(4, 2 * 8).bfloat16().requires_grad_()
    w = torch.randn(3, 2, 8, requires_grad=True)
    y = block_circular(x, w)
    assert y.dtype == torch.float32
    assert_close_rel(y, x.detach().double() @ dense_reference(w.detach().double()).T, rel=1e-5)
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32


def test_empty_batch() -> None:
    x = torch.randn(0, 3, 2 * 4, requires_grad=True)
    w = torch.randn(5, 2, 4, requires_grad=True)
    y = block_circular(x, w)
    assert y.shape == (0, 3, 5 * 4)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_bad_shapes_and_dtypes_raise() -> None:
    w = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="n\\*p"):
        block_circular(torch.randn(5, 11), w)
    with pytest.raises(ValueError, match="m, n, p"):
        block_circular(torch.randn(5, 12), w[0])
    with pytest.raises(TypeError, match="real floating"):
        block_circular(torch.ones(5, 12, dtype=torch.long), w)


def test_circulant_convention_matches_peft() -> None:
    w = torch.randn(2, 3, 16)
    torch.testing.assert_close(circulant_matrix(w), get_circulant_fast(w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m,n,p", [(1, 1, 768), (6, 6, 128), (2, 3, 5)])
def test_reference_grad_reproduces_peft_backward(m: int, n: int, p: int) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 7, n * p, requires_grad=True)
    w = torch.randn(m, n, p, requires_grad=True)
    g = torch.randn(2, 7, m * p)
    y_peft = BlockCircularConvolution.apply(x, w)
    gx_peft, gw_peft = torch.autograd.grad(y_peft, (x, w), g)
    y_ref = block_circular(x, w, reference_grad=True)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, w), g)
    gx, gw = torch.autograd.grad(block_circular(x, w), (x, w), g)
    _, gx_dense, gw_dense = float64_grads(x, w, g)

    assert_close_rel(y_ref, y_peft.double(), rel=1e-5)
    assert_close_rel(gx_ref, gx_peft.double(), rel=1e-5)
    assert_close_rel(gw_ref, gw_peft.double(), rel=1e-5)
    # PEFT's kernel gradient is right, its input gradient is not (p >= 3)
    assert_close_rel(gw_peft, gw_dense, rel=1e-5)
    rel_err = ((gx_peft.double() - gx_dense).norm() / gx_dense.norm()).item()
    assert rel_err > 0.5
    assert_close_rel(gx, gx_dense)
    assert torch.equal(gw, gw_ref)


@pytest.mark.parametrize("p", [1, 2])
def test_reference_grad_is_exact_for_real_spectra(p: int) -> None:
    """For p <= 2 the DFT is real, so conjugation changes nothing: both gradients agree."""
    x = torch.randn(5, 3 * p, requires_grad=True)
    w = torch.randn(2, 3, p)
    g = torch.randn(5, 2 * p)
    (gx_ref,) = torch.autograd.grad(block_circular(x, w, reference_grad=True), x, g)
    (gx,) = torch.autograd.grad(block_circular(x, w), x, g)
    torch.testing.assert_close(gx_ref, gx)


def test_forward_equals_peft_c3a_layer_in_a_bert_model() -> None:
    torch.manual_seed(4)
    config = BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, vocab_size=100, max_position_embeddings=32)
    base = BertModel(config).eval()
    p = 12
    peft_model = get_peft_model(copy.deepcopy(base), C3AConfig(block_size=p, target_modules=["query", "value"],
                                                              init_weights="gaussian")).eval()
    ours = copy.deepcopy(base)
    names = replace_linears(ours, ["query", "value"], lambda lin: C3ALinear(lin, p))
    assert len(names) == 4
    with torch.no_grad():
        for name in names:
            ours.get_submodule(name).c3a_kernel.copy_(
                peft_model.get_base_model().get_submodule(name).c3a_kernel["default"])
    ids = torch.randint(0, 100, (3, 10))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).last_hidden_state
        got = ours(input_ids=ids).last_hidden_state
        assert not torch.allclose(expected, base(input_ids=ids).last_hidden_state, atol=1e-3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [512, 128, 32])
def test_chunked_kernel_gradient_equals_the_single_product(rows: int) -> None:
    """The CUDA path sums the kernel gradient over token chunks; same result as one product."""
    from c3a.circular import _conj_gram, _gram_rows

    a = torch.randn(5, 512, 3, dtype=torch.complex128)
    b = torch.randn(5, 512, 4, dtype=torch.complex128)
    ref = torch.einsum("ftm,ftn->fmn", a.conj(), b)
    torch.testing.assert_close(_conj_gram(a, b, rows), ref)
    assert _gram_rows(512, cuda=True) == 256 and _gram_rows(6 * 67, cuda=True) == 201
    assert _gram_rows(2 * 31, cuda=True) == 62 and _gram_rows(512, cuda=False) == 512
