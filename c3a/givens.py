"""qGOFT / GOFT: Givens-rotation orthogonal fine-tuning of `nn.Linear` layers.

A layer computes `y = W (R^T x) + bias` with `R = P_L ... P_1`, a product of log2(d_in)
stages of disjoint 2x2 blocks (docs/METHODS.md, "qGOFT / GOFT"). GOFT constrains each block
to a rotation by `pi * tanh(phi)`; qGOFT learns the four entries freely and is pulled
towards orthogonality by `regularizer()`.

The forward applies the stages to the frozen weight, `F.linear(x, W R^T, bias)`: its extra
cost is independent of the number of tokens. R's structure makes `W R^T` cheap:
stages 1..log2(s) act inside aligned groups of s coordinates, so their product B is block
diagonal; the later stages only touch the coordinates 0, s, 2s, ..., so their product C is
a small (d/s x d/s) rotation. `R W^T = C (B W^T)` is one batched GEMM with s x s blocks
(s = 32) and a product on d/s rows. B and C are built from the 2x2 blocks (d*s + (d/s)^2
entries); the d x d R is never formed in training.

The backward works on the activations: the gradient of the blocks is a sum over tokens, so
it cannot be token-independent, and taken through W' it would need dL/dW' = g^T x, a full
T x d_in x d_out GEMM per layer (alone 1.27-1.34x a LoRA step, docs/benchmarks_qgoft.md).
Instead u = g W (which the input gradient g W R^T = u R^T needs anyway) meets x C and x in
s-wide blocks: 2 T d s flops per factor.

Precision: W R^T and the backward's rotations run in float32 for bf16/fp16 bases (in the
weight's own dtype when wider); W R^T is cast to the base dtype once, so the log2(d_in)
stage roundings never happen in half precision. At init (identity blocks) it is exact.

The method `kind: givens` (`Givens`) wraps the targeted linears; it saves the whole model with
the rotations merged into plain linears (there is no PEFT format for them).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from c3a.methods import Method, register
from c3a.modules import replace_linears

# variant -> its trainable parameters at the identity, for input width d; the keys are the
# variants GivensLinear accepts
VARIANT_PARAMETERS = {
    "qgoft": lambda d, **factory: {"givens_blocks": torch.eye(2, **factory).repeat(d - 1, 1, 1)},
    "goft": lambda d, **factory: {"givens_phi": torch.zeros(d - 1, **factory)},
}


@functools.cache
def _stages(d: int) -> tuple[int, ...]:
    """The number of pairs of each stage; an odd node count carries its last node on."""
    stages, cur = [], d
    while cur > 1:
        stages.append(cur // 2)
        cur = cur // 2 + cur % 2
    return tuple(stages)


def givens_pairs(d: int) -> list[tuple[Tensor, Tensor]]:
    """The pairs (a, a + s) of each stage, stage 1 first, as index tensors (a, b).

    Stage r has step s = 2^(r-1) and pairs a = k * 2s for k < cnt; an odd node count
    carries its last node to the next stage. There are d - 1 pairs in all.
    """
    pairs = []
    for r, cnt in enumerate(_stages(d)):
        step = 2**r
        a = torch.arange(cnt) * 2 * step
        pairs.append((a, a + step))
    return pairs


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


FINE = 32  # width of the diagonal blocks that carry the first log2(FINE) stages (see `_factors`)


@functools.cache
def _stage_index(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For the stages of width n as dense (n x n) matrices, stacked (L, n, n): the flat
    positions of every pair's [aa, ab, ba, bb] entries in `givens_pairs` order, and the ones
    on the diagonal of the coordinates a stage leaves alone. Cached per device."""
    pairs = givens_pairs(n)
    ident = torch.eye(n).repeat(len(pairs), 1, 1)
    index = []
    for r, (a, b) in enumerate(pairs):
        ident[r, a, a] = ident[r, b, b] = 0
        index.append(torch.stack((a * n + a, a * n + b, b * n + a, b * n + b), 1) + r * n * n)
    return torch.cat(index).flatten().to(device), ident.to(device)


def _stage_product(blocks: Tensor, n: int) -> Tensor:
    """P_L ... P_1 for a batch of width-n rotations, blocks (batch, n - 1, 2, 2) -> (batch, n, n).

    Each stage is one dense n x n matrix placed by a single scatter, then multiplied in
    order: a few ops whatever n is, so cheap to differentiate at the small widths it gets
    (B's s = 32, C's d/32; O(L n^3), meant for n up to a few hundred).
    """
    batch = blocks.shape[0]
    if n == 1:  # no stages
        return blocks.new_ones(batch, 1, 1)
    index, ident = _stage_index(n, blocks.device)
    stages = ident.shape[0]
    placed = blocks.new_zeros(batch, stages * n * n).index_copy(1, index, blocks.reshape(batch, -1))
    first, *rest = (placed.view(batch, stages, n, n) + ident.to(blocks.dtype)).unbind(1)  # one backward op
    for p in rest:
        first = p @ first
    return first


def _factors(blocks: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """R = C B, as B's diagonal blocks (d/s, s, s) and C restricted to the coordinates
    0, s, 2s, ... (d/s, d/s), where s is the largest power of two dividing d, at most FINE.

    Stages 1..log2(s) pair coordinates inside aligned groups of s, so their product B is
    block diagonal, each block the full stage product of width s; the later stages only touch
    multiples of s, so their product C is the identity elsewhere and, on those d/s
    coordinates, the stage product of width d/s. d*s + (d/s)^2 entries, never the d x d R.
    """
    s = min(d & -d, FINE)
    nb, fine, off = d // s, [], 0
    for cnt in _stages(d)[: s.bit_length() - 1]:
        fine.append(blocks[off : off + cnt].view(nb, cnt // nb, 2, 2))  # pairs of group b are contiguous
        off += cnt
    diag = _stage_product(torch.cat(fine, 1) if fine else blocks.new_empty(nb, 0, 2, 2), s)  # s = 1: odd d
    return diag, _stage_product(blocks[None, off:], nb)[0]


def _rotation(blocks: Tensor, d: int) -> Tensor:
    """The dense R = C B (d x d), for inspection and tests."""
    diag, coarse = _factors(blocks, d)
    s = diag.shape[-1]
    b = torch.block_diag(*diag)
    return b.index_copy(0, torch.arange(0, d, s, device=b.device), coarse @ b[::s])  # C acts on rows 0, s, ...


def _block_mm(a: Tensor, diag: Tensor) -> Tensor:
    """a (T, d) times the block-diagonal matrix with blocks `diag` (d/s, s, s): a bmm on strided
    views of a and of the (T, d) output. torch runs it block by block for a strided output, with
    no copies; a contiguous bmm output plus a transposing copy was no faster on CPU."""
    t, (nb, s, _) = a.shape[0], diag.shape
    out = a.new_empty(t, nb * s)
    torch.bmm(a.view(t, nb, s).transpose(0, 1), diag, out=out.view(t, nb, s).transpose(0, 1))
    return out


def _coarse(x: Tensor, coarse: Tensor) -> Tensor:
    """x C, a copy of x whose columns 0, s, 2s, ... are mixed by `coarse`."""
    out = x.clone()
    s = x.shape[1] // coarse.shape[0]
    out[:, ::s] = x[:, ::s] @ coarse
    return out


def _rotate_weight(weight: Tensor, blocks: Tensor) -> Tensor:
    """W R^T in the blocks' dtype, as the transpose of R W^T = C (B W^T): B's blocks meet
    W's column groups in one bmm that writes contiguously, then C mixes the rows 0, s, 2s, ...
    d_out x d_in x 2s flops, whatever the number of tokens."""
    with torch.autocast(weight.device.type, enabled=False):  # autocast would run the stages in bf16/fp16
        diag, coarse = _factors(blocks, weight.shape[1])
        (nb, s, _), d_out = diag.shape, weight.shape[0]
        rows = torch.bmm(diag, weight.to(blocks.dtype).reshape(d_out, nb, s).permute(1, 2, 0)).view(-1, d_out)
        rows[::s] = coarse @ rows[::s]
    return rows.t()


class _GivensLinearFn(torch.autograd.Function):
    """`F.linear(x, W R^T, bias)` with R = C B built from the 2x2 blocks (`_factors`).

    The factors are built without autograd in the forward and again, with it, in the
    backward, where x C is recomputed too: the layer saves only its input and the blocks,
    like a plain linear. (A graph of small saved tensors per layer would also pin holes
    in the allocator's heap between the large activations: +35 % peak RSS over 3 steps.)
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None, blocks: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, blocks)
        return F.linear(x.to(weight.dtype), _rotate_weight(weight, blocks).to(weight.dtype), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, blocks = ctx.saved_tensors
        need_x, need_w, need_b, need_blocks = ctx.needs_input_grad
        with torch.enable_grad():
            blocks = blocks.detach().requires_grad_(need_blocks)
            diag, coarse = _factors(blocks, x.shape[-1])
        b, c = diag.detach(), coarse.detach()  # their values, for the products below
        g2 = grad.reshape(-1, grad.shape[-1])
        x2 = x.reshape(-1, x.shape[-1]).to(blocks.dtype)
        (nb, s, _), t = b.shape, x2.shape[0]
        grad_x = grad_w = grad_b = grad_blocks = None
        if need_b:
            grad_b = g2.sum(0)
        xc = _coarse(x2, c) if need_w or need_blocks else None
        if need_w:
            grad_w = (g2.t() @ _block_mm(xc, b).to(g2.dtype)).to(weight.dtype)
        if need_x or need_blocks:
            gu = (g2 @ weight.to(g2.dtype)).to(blocks.dtype)  # dL/du, u = (x C) B
            g_xc = _block_mm(gu, b.transpose(1, 2))  # dL/d(x C)
            if need_blocks:  # dL/dB_b = (x C)_b^T dL/du_b, dL/dC = x_idx^T dL/d(x C)_idx
                grad_diag = torch.bmm(xc.view(t, nb, s).permute(1, 2, 0), gu.view(t, nb, s).transpose(0, 1))
                grad_coarse = x2[:, ::s].t() @ g_xc[:, ::s]
                built = [(f, g) for f, g in ((diag, grad_diag), (coarse, grad_coarse)) if f.requires_grad]
                outputs, grads = zip(*built)  # the fine part always has a stage when d is even; C may be 1 x 1
                grad_blocks = torch.autograd.grad(outputs, blocks, grads)[0]
            if need_x:
                g_xc[:, ::s] = g_xc[:, ::s] @ c.t()
                grad_x = g_xc.view(x.shape).to(x.dtype)
        return grad_x, grad_w, grad_b, grad_blocks


class GivensLinear(nn.Module):
    """A frozen `nn.Linear` (`base_layer`) preceded by a learned Givens transform R^T.

    variant "goft": one angle parameter per pair (`givens_phi`, d_in - 1 values);
    variant "qgoft": a free 2x2 block per pair (`givens_blocks`, 4 (d_in - 1) values).
    Both start at the identity, so wrapping leaves the model's outputs unchanged. Every
    trainable parameter is named `givens_*` (the trainer excludes them from weight decay).
    Fast when 32 divides d_in (every transformer width); otherwise C is a dense
    d_in/s x d_in/s product each step, fine at small widths, slow for large odd ones.
    """

    def __init__(self, base_layer: nn.Linear, variant: str = "qgoft") -> None:
        if variant not in VARIANT_PARAMETERS:
            raise ValueError(f"unknown Givens variant {variant!r}; allowed: {', '.join(VARIANT_PARAMETERS)}")
        if base_layer.in_features < 2:
            raise ValueError(f"Givens rotations need in_features >= 2, got {base_layer.in_features}")
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.variant = variant
        self.merged = False
        self._original_weight: Tensor | None = None
        weight = base_layer.weight
        factory = {"dtype": _compute_dtype(weight.dtype), "device": weight.device}
        for name, value in VARIANT_PARAMETERS[variant](base_layer.in_features, **factory).items():
            self.register_parameter(name, nn.Parameter(value))

    def rotation_blocks(self) -> Tensor:
        """The (d_in - 1, 2, 2) blocks, stage by stage; differentiable in the parameters."""
        if self.variant == "qgoft":
            return self.givens_blocks
        theta = torch.pi * torch.tanh(self.givens_phi)
        cos, sin = torch.cos(theta), torch.sin(theta)
        return torch.stack((cos, -sin, sin, cos), -1).unflatten(-1, (2, 2))

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base_layer(x)
        weight = self.base_layer.weight
        blocks = self.rotation_blocks().to(_compute_dtype(weight.dtype))
        return _GivensLinearFn.apply(x, weight, self.base_layer.bias, blocks)

    def regularizer(self) -> Tensor:
        """qGOFT's soft orthogonality penalty, sum over pairs of (g00 g01 + g10 g11)^2.

        It is the off-diagonal entry of G^T G, zero exactly when a block's columns are
        orthogonal (identity at init). GOFT blocks are rotations: its penalty is 0.
        """
        if self.variant == "goft":
            return self.givens_phi.new_zeros(())
        g = self.givens_blocks
        return (g[:, 0, 0] * g[:, 0, 1] + g[:, 1, 0] * g[:, 1, 1]).square().sum()

    def rotation_matrix(self) -> Tensor:
        """The dense d_in x d_in R (tests and inspection only; training never builds it)."""
        return _rotation(self.rotation_blocks(), self.base_layer.in_features)

    @torch.no_grad()
    def rotated_weight(self) -> Tensor:
        """W R^T in the base weight's dtype."""
        weight = self.base_layer.weight
        blocks = self.rotation_blocks().to(_compute_dtype(weight.dtype))
        return _rotate_weight(weight, blocks).to(weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Write W R^T into the base layer; keeps the original W so `unmerge` is exact
        (qGOFT blocks need not be orthogonal, so R^T may be ill-conditioned to invert)."""
        if self.merged:
            return
        weight = self.base_layer.weight
        self._original_weight = weight.detach().clone()
        weight.copy_(self.rotated_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original base weight."""
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._original_weight)
        self._original_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, merged={self.merged}"


@register("givens")
class Givens(Method):
    """qGOFT or GOFT (`variant`) on the targeted linears."""

    no_decay = ("givens_",)  # decay would pull the blocks to zero, not to the identity

    def build(self, model: nn.Module, target_modules: Sequence[str] | str, variant: str = "qgoft") -> nn.Module:
        replace_linears(model, target_modules, lambda linear: GivensLinear(linear, variant=variant))
        return model

    def save(self, model: nn.Module, out_dir: Path, head_modules: Sequence[str]) -> None:
        """The whole model, each Givens layer merged into its base linear (on a copy)."""
        model = copy.deepcopy(model)
        for name, layer in list(model.named_modules()):
            if isinstance(layer, GivensLinear):
                layer.merge()
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, layer.base_layer)
        model.save_pretrained(out_dir)


def givens_regularizer(model: nn.Module) -> Tensor:
    """Sum of `regularizer()` over the model's Givens layers (the runner scales it by lambda)."""
    terms = [m.regularizer() for m in model.modules() if isinstance(m, GivensLinear)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _is_givens_key(key: str) -> bool:
    return key.rpartition(".")[2].startswith("givens_")


def givens_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The trainable Givens parameters of `model` (its state_dict's `givens_*` entries)."""
    return {k: v for k, v in model.state_dict().items() if _is_givens_key(k)}


def load_givens_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load `givens_state_dict` output into a model wrapped the same way; strict on keys."""
    expected = set(givens_state_dict(model))
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise KeyError(f"Givens state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(state_dict, strict=False)
