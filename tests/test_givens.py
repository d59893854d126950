"""qGOFT/GOFT layers against an independent dense float64 construction of R (METHODS.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaModel

from c3a.givens import (
    GivensLinear,
    givens_pairs,
    givens_regularizer,
    givens_state_dict,
    load_givens_state_dict,
)
from c3a.modules import replace_linears

SIX = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
F64 = torch.float64


def spec_pairs(d: int) -> list[list[tuple[int, int]]]:
    """The stage rule written out from METHODS.md, independently of the library."""
    stages, cur, step = [], d, 1
    while cur > 1:
        stages.append([(k * 2 * step, k * 2 * step + step) for k in range(cur // 2)])
        cur, step = cur // 2 + cur % 2, step * 2
    return stages


def dense_stages(d: int, blocks: Tensor) -> list[Tensor]:
    """P_1 .. P_L as dense d x d matrices holding each pair's 2x2 block, differentiable in blocks."""
    mats, i = [], 0
    for stage in spec_pairs(d):
        a = torch.tensor([p[0] for p in stage])
        b = torch.tensor([p[1] for p in stage])
        g = blocks[i : i + len(stage)]
        i += len(stage)
        rows, cols = torch.cat((a, a, b, b)), torch.cat((a, b, a, b))
        vals = torch.cat((g[:, 0, 0], g[:, 0, 1], g[:, 1, 0], g[:, 1, 1]))
        mats.append(torch.eye(d, dtype=blocks.dtype).index_put((rows, cols), vals))
    assert i == d - 1
    return mats


def dense_R(d: int, blocks: Tensor) -> Tensor:
    R = torch.eye(d, dtype=blocks.dtype)
    for P in dense_stages(d, blocks):
        R = P @ R
    return R


def randomize(layer: GivensLinear, scale: float = 0.5) -> None:
    """Non-identity parameters (qGOFT blocks far from orthogonal)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("givens_"):
                p.add_(scale * torch.randn_like(p))


def givens_param(layer: GivensLinear) -> nn.Parameter:
    return layer.givens_blocks if layer.variant == "qgoft" else layer.givens_phi


def small_roberta(seed: int = 0) -> RobertaForSequenceClassification:
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1, num_labels=2)
    return RobertaForSequenceClassification(cfg).eval()


def wrap(model: nn.Module, variant: str) -> nn.Module:
    replace_linears(model, SIX, lambda linear: GivensLinear(linear, variant))
    return model


TOKENS = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))


def test_stage_structure() -> None:
    assert [len(a) for a, _ in givens_pairs(768)] == [384, 192, 96, 48, 24, 12, 6, 3, 1, 1]
    d12 = [list(zip(a.tolist(), b.tolist())) for a, b in givens_pairs(12)]
    assert d12 == [[(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)], [(0, 2), (4, 6), (8, 10)], [(0, 4)], [(0, 8)]]
    for d in [*range(2, 70), 768, 1024, 3072, 4096]:
        stages = [list(zip(a.tolist(), b.tolist())) for a, b in givens_pairs(d)]
        assert stages == spec_pairs(d)
        assert sum(map(len, stages)) == d - 1
        assert sorted(b for s in stages for _, b in s) == list(range(1, d))  # every node but 0 retires once


@pytest.mark.parametrize("variant", ["qgoft", "goft"])
@pytest.mark.parametrize(("d", "d_out"), [(2, 3), (12, 7), (13, 7), (64, 5), (768, 7), (1024, 3), (3072, 3)])
def test_matches_dense_reference(d: int, d_out: int, variant: str) -> None:
    torch.manual_seed(d)
    layer = GivensLinear(nn.Linear(d, d_out, dtype=F64), variant)
    randomize(layer)
    x = torch.randn(2, 3, d, dtype=F64, requires_grad=True)
    upstream = torch.randn(2, 3, d_out, dtype=F64)
    (layer(x) * upstream).sum().backward()

    param = givens_param(layer).detach().clone().requires_grad_(True)
    if variant == "goft":
        theta = torch.pi * torch.tanh(param)
        c, s = torch.cos(theta), torch.sin(theta)
        blocks = torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)
    else:
        blocks = param
    x_ref = x.detach().clone().requires_grad_(True)
    h = x_ref
    for P in reversed(dense_stages(d, blocks)):  # row form of y = W R^T x: x R W^T, R = P_L .. P_1
        h = h @ P
    y_ref = h @ layer.base_layer.weight.T + layer.base_layer.bias
    (y_ref * upstream).sum().backward()

    torch.testing.assert_close(layer(x), y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(givens_param(layer).grad, param.grad, rtol=1e-9, atol=1e-10)
    if d == 13:
        torch.testing.assert_close(layer.rotation_matrix(), dense_R(d, blocks.detach()), rtol=1e-12, atol=1e-12)


class RecordOps(TorchDispatchMode):
    """Every aten op run inside the mode, with the shapes of its tensor arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.calls.append((str(func), [tuple(a.shape) for a in args if isinstance(a, Tensor)]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant", ["qgoft", "goft"])
def test_forward_touches_the_tokens_only_in_the_base_gemm(variant: str) -> None:
    """The stages act on W (the issue's "cost independent of the number of tokens"): in a
    training forward the only op that reads a token-sized tensor is the layer's own GEMM."""
    tokens = 1009  # a prime, so no block or stage shape equals it
    layer = GivensLinear(nn.Linear(64, 16), variant)
    randomize(layer)
    x = torch.randn(1, tokens, 64, requires_grad=True)
    with RecordOps() as record:
        y = layer(x)
    touching = {op for op, shapes in record.calls if any(tokens in shape for shape in shapes)}
    assert "aten.addmm.default" in touching
    assert touching <= {"aten.addmm.default", "aten.view.default", "aten._unsafe_view.default"}, touching
    torch.testing.assert_close(y, F.linear(x, layer.rotated_weight(), layer.base_layer.bias))


@pytest.mark.parametrize("variant", ["qgoft", "goft"])
@pytest.mark.parametrize("d", [5, 6])
def test_gradcheck_all_inputs(d: int, variant: str) -> None:
    """Also covers the gradients of an unfrozen base weight and bias."""
    torch.manual_seed(0)
    layer = GivensLinear(nn.Linear(d, 3, dtype=F64), variant)
    randomize(layer)
    name = "givens_blocks" if variant == "qgoft" else "givens_phi"
    inputs = (torch.randn(4, d, dtype=F64), layer.base_layer.weight.detach(), layer.base_layer.bias.detach(),
              givens_param(layer).detach())
    inputs = tuple(t.clone().requires_grad_(True) for t in inputs)

    def f(x: Tensor, w: Tensor, b: Tensor, p: Tensor) -> Tensor:
        params = {"base_layer.weight": w, "base_layer.bias": b, name: p}
        return torch.func.functional_call(layer, params, (x,))

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("d", [13, 768])
def test_goft_rotation_is_orthogonal(d: int) -> None:
    torch.manual_seed(0)
    layer = GivensLinear(nn.Linear(d, 2, dtype=F64), "goft")
    randomize(layer, scale=2.0)
    R = layer.rotation_matrix()
    assert (R - torch.eye(d, dtype=F64)).abs().max() > 0.1
    torch.testing.assert_close(R @ R.T, torch.eye(d, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["qgoft", "goft"])
def test_identity_at_init_on_real_model(variant: str) -> None:
    model = small_roberta()
    before = model(TOKENS).logits
    wrap(model, variant)
    assert sum(isinstance(m, GivensLinear) for m in model.modules()) == 12
    torch.testing.assert_close(model(TOKENS).logits, before)
    assert givens_regularizer(model).item() == 0.0
    # Only the Givens parameters (and nothing of the wrapped linears) receive gradients.
    model(TOKENS).logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "base_layer" in n)
    assert all(p.grad is not None for n, p in model.named_parameters() if "givens_" in n)


def test_regularizer() -> None:
    torch.manual_seed(0)
    layer = GivensLinear(nn.Linear(13, 4), "qgoft")
    assert layer.regularizer().item() == 0.0
    randomize(layer)
    g = layer.givens_blocks.detach().double()
    expected = sum((g[i, 0, 0] * g[i, 0, 1] + g[i, 1, 0] * g[i, 1, 1]) ** 2 for i in range(12))
    torch.testing.assert_close(layer.regularizer().double(), expected)
    layer.regularizer().backward()
    assert layer.givens_blocks.grad.abs().sum() > 0

    goft = GivensLinear(nn.Linear(13, 4), "goft")
    randomize(goft)
    assert goft.regularizer().item() == 0.0
    total = givens_regularizer(nn.Sequential(layer, goft, GivensLinear(nn.Linear(13, 4), "qgoft")))
    torch.testing.assert_close(total, layer.regularizer())


@pytest.mark.parametrize("variant", ["qgoft", "goft"])
def test_merge_unmerge_round_trip(variant: str) -> None:
    model = wrap(small_roberta(), variant)
    layers = [m for m in model.modules() if isinstance(m, GivensLinear)]
    for layer in layers:
        randomize(layer, 0.2)
    originals = [layer.base_layer.weight.detach().clone() for layer in layers]
    unmerged = model(TOKENS).logits
    for layer in layers:
        layer.merge()
    assert all(layer.merged for layer in layers)
    torch.testing.assert_close(model(TOKENS).logits, unmerged, rtol=1e-5, atol=1e-5)
    for layer, original in zip(layers, originals):
        layer.unmerge()
        assert torch.equal(layer.base_layer.weight, original)
    torch.testing.assert_close(model(TOKENS).logits, unmerged)


def test_save_load_reproduces_outputs() -> None:
    model = wrap(small_roberta(seed=0), "qgoft")
    for layer in model.modules():
        if isinstance(layer, GivensLinear):
            randomize(layer, 0.2)
    state = givens_state_dict(model)
    assert len(state) == 12 and all(k.rsplit(".", 1)[1] == "givens_blocks" for k in state)

    fresh = wrap(small_roberta(seed=0), "qgoft")
    assert not torch.allclose(fresh(TOKENS).logits, model(TOKENS).logits)
    load_givens_state_dict(fresh, state)
    torch.testing.assert_close(fresh(TOKENS).logits, model(TOKENS).logits, rtol=0, atol=0)

    first = next(iter(state))
    with pytest.raises(KeyError, match="missing"):
        load_givens_state_dict(fresh, {k: v for k, v in state.items() if k != first})
    with pytest.raises(KeyError, match="unexpected"):
        load_givens_state_dict(fresh, {**state, "extra.givens_blocks": state[first]})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = GivensLinear(nn.Linear(64, 16).to(dtype), "qgoft")
    randomize(layer, 0.3)
    assert layer.givens_blocks.dtype == torch.float32
    x = torch.randn(8, 64).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    y.float().square().sum().backward()

    blocks = layer.givens_blocks.detach().double().requires_grad_(True)
    R = dense_R(64, blocks)
    y_ref = x.double() @ R @ layer.base_layer.weight.double().T + layer.base_layer.bias.double()
    y_ref.square().sum().backward()
    torch.testing.assert_close(y.double(), y_ref, rtol=0.02, atol=0.05)
    torch.testing.assert_close(layer.givens_blocks.grad.double(), blocks.grad, rtol=0.05, atol=0.5)


def test_autocast_bf16() -> None:
    """Mixed precision: float32 weights, bf16 matmuls; gradients match float32 closely."""
    torch.manual_seed(0)
    layer = GivensLinear(nn.Linear(64, 16), "qgoft")
    randomize(layer, 0.3)
    x = torch.randn(8, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    grads = (x.grad.clone(), layer.givens_blocks.grad.clone())
    x.grad = layer.givens_blocks.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(grads[0], x.grad, rtol=0.02, atol=0.02)
    torch.testing.assert_close(grads[1], layer.givens_blocks.grad, rtol=0.02, atol=0.1)


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="qgoft, goft"):
        GivensLinear(nn.Linear(4, 4), "oft")


@pytest.mark.parametrize("variant", ["qgoft", "goft"])
def test_param_counts_roberta_base(variant: str) -> None:
    torch.manual_seed(0)
    cfg = RobertaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    model = wrap(RobertaModel(cfg, add_pooling_layer=False).requires_grad_(False), variant)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == {"goft": 82_872, "qgoft": 331_488}[variant]
    assert all(n.rsplit(".", 1)[1].startswith("givens_") for n, p in model.named_parameters() if p.requires_grad)


def test_param_counts_roberta_large() -> None:
    """Built on the meta device: the same module tree, without initializing 355M weights."""
    cfg = RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    for variant, expected in [("goft", 221_040), ("qgoft", 884_160)]:
        with torch.device("meta"):
            model = wrap(RobertaModel(cfg, add_pooling_layer=False).requires_grad_(False), variant)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
