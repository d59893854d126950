"""qGOFT / GOFT: Givens-rotation orthogonal fine-tuning of `nn.Linear` layers.

A layer computes `y = W (R^T x) + bias` with `R = P_L ... P_1`, a product of log2(d_in)
stages of disjoint 2x2 blocks (docs METHODS.md, "qGOFT / GOFT"). GOFT constrains each block
to a rotation by `pi * tanh(phi)`; qGOFT learns the four entries freely and is pulled
towards orthogonality by `regularizer()`.

The rotation is applied to the frozen weight, never to the activations, so its cost is
O(d_out * d_in) per step whatever the number of tokens: `W' = W R^T` mixes the columns of
W exactly as `P` mixes the coordinates of x. Stage r only touches the columns that are
multiples of 2^(r-1) ("nodes"); the second column of each pair never takes part again, so
the stages shrink by half and the whole product costs about two passes over W. The work
is done on W^T, whose rows are W's columns: a stage's pairs are then adjacent rows, and a
stage is one batched (2 x 2) @ (2 x d_out) matmul.

Precision: the rotation runs in float32 for bf16/fp16 base weights (in the weight's own
dtype when wider) and W' is cast back to the base dtype once, so the log2(d_in) roundings
of the stages do not compound in half precision. At init (identity blocks) W' == W
exactly in every dtype.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

VARIANTS = ("qgoft", "goft")

# One stage: (number of pairs, whether an odd node passes through unchanged).
Stages = tuple[tuple[int, bool], ...]


@functools.cache
def _stages(d: int) -> Stages:
    stages, cur = [], d
    while cur > 1:
        stages.append((cur // 2, cur % 2 == 1))
        cur = cur // 2 + cur % 2
    return tuple(stages)


def givens_pairs(d: int) -> list[tuple[Tensor, Tensor]]:
    """The pairs (a, a + s) of each stage, stage 1 first, as index tensors (a, b).

    Stage r has step s = 2^(r-1) and pairs a = k * 2s for k < cnt; an odd node count
    carries its last node to the next stage. There are d - 1 pairs in all.
    """
    pairs = []
    for r, (cnt, _) in enumerate(_stages(d)):
        step = 2**r
        a = torch.arange(cnt) * 2 * step
        pairs.append((a, a + step))
    return pairs


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _rows(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """W^T as a contiguous tensor in `dtype` (one pass: transpose and cast together)."""
    out = torch.empty(weight.shape[::-1], dtype=dtype, device=weight.device)
    return out.copy_(weight.t())


def _rotate_rows(rows: Tensor, blocks: Tensor, stages: Stages) -> tuple[Tensor, list[Tensor]]:
    """Apply the stages to the rows of `rows` (= the columns of W), stage 1 first.

    `cur` holds the nodes still in play (rows 0, s, 2s, ... of the input); a pair's two
    nodes are adjacent in it, and its second node, once mixed, is final: it is written
    straight to its row of the output (rows s, 3s, 5s, ... for step s). Returns the rotated
    rows and each stage's input pairs, shaped (cnt, 2, d_out), for the backward pass.
    """
    out, inputs, cur, off = torch.empty_like(rows), [], rows, 0
    for r, (cnt, carry) in enumerate(stages):
        step = 2**r
        pairs = cur[: 2 * cnt].unflatten(0, (cnt, 2))  # a view, no copy
        mixed = torch.matmul(blocks[off : off + cnt], pairs)  # [a'; b'] = G [a; b] for every pair
        out[step : 2 * cnt * step : 2 * step] = mixed[:, 1]
        inputs.append(pairs)
        cur = torch.cat((mixed[:, 0], cur[2 * cnt :])) if carry else mixed[:, 0]
        off += cnt
    out[0] = cur[0]
    return out, inputs


class _GivensLinearFn(torch.autograd.Function):
    """`F.linear(x, W R^T, bias)` with a hand-written backward.

    Autograd through the stages would keep W' and every stage's input alive until the
    backward pass (about three copies of W per layer); this recomputes them instead (about
    two cheap passes over W), so the layer saves only its input, like a plain linear.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None, blocks: Tensor,
                stages: Stages) -> Tensor:
        rotated_t, _ = _rotate_rows(_rows(weight, blocks.dtype), blocks, stages)  # (W R^T)^T
        ctx.save_for_backward(x, weight, blocks)
        ctx.stages = stages
        return F.linear(x, rotated_t.t().to(weight.dtype), bias)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, blocks = ctx.saved_tensors
        stages: Stages = ctx.stages
        need_x, need_w, need_b, need_blocks = ctx.needs_input_grad[:4]
        rotated_t, inputs = _rotate_rows(_rows(weight, blocks.dtype), blocks, stages)
        grad2 = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = grad_blocks = None
        if need_x:
            grad_x = (grad2 @ rotated_t.t().to(grad.dtype)).view(x.shape).to(x.dtype)
        if need_b:
            grad_b = grad2.sum(0)
        if need_w or need_blocks:
            # dL/d(W R^T)^T, then back through the stages, last first.
            x2 = x.reshape(-1, x.shape[-1]).to(grad.dtype)
            grad_rows = (x2.t() @ grad2).to(blocks.dtype)
            grad_cur, grads, off = grad_rows[:1], [], blocks.shape[0]
            for r in reversed(range(len(stages))):
                cnt, carry = stages[r]
                step, off = 2**r, off - cnt
                retired = grad_rows[step : 2 * cnt * step : 2 * step]
                grad_mixed = torch.stack((grad_cur[:cnt], retired), 1)  # (cnt, 2, d_out)
                grads.append(grad_mixed @ inputs[r].transpose(1, 2))
                if r or need_w:  # stage 1's input is W itself: only needed for its gradient
                    grad_pairs = (blocks[off : off + cnt].transpose(1, 2) @ grad_mixed).flatten(0, 1)
                    grad_cur = torch.cat((grad_pairs, grad_cur[cnt:])) if carry else grad_pairs
            grad_blocks = torch.cat(grads[::-1])
            if need_w:
                grad_w = grad_cur.t().to(weight.dtype)
        return grad_x, grad_w, grad_b, grad_blocks, None


class GivensLinear(nn.Module):
    """A frozen `nn.Linear` (`base_layer`) preceded by a learned Givens transform R^T.

    variant "goft": one angle parameter per pair (`givens_phi`, d_in - 1 values);
    variant "qgoft": a free 2x2 block per pair (`givens_blocks`, 4 (d_in - 1) values).
    Both start at the identity, so wrapping leaves the model's outputs unchanged. Every
    trainable parameter is named `givens_*` (the trainer excludes them from weight decay).
    """

    def __init__(self, base_layer: nn.Linear, variant: str = "qgoft") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown Givens variant {variant!r}; allowed: {', '.join(VARIANTS)}")
        if base_layer.in_features < 2:
            raise ValueError(f"Givens rotations need in_features >= 2, got {base_layer.in_features}")
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.variant = variant
        self.merged = False
        self._original_weight: Tensor | None = None
        d, weight = base_layer.in_features, base_layer.weight
        self._stages = _stages(d)
        factory = {"dtype": _compute_dtype(weight.dtype), "device": weight.device}
        if variant == "goft":
            self.givens_phi = nn.Parameter(torch.zeros(d - 1, **factory))
        else:
            self.givens_blocks = nn.Parameter(torch.eye(2, **factory).repeat(d - 1, 1, 1))

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
        return _GivensLinearFn.apply(x, weight, self.base_layer.bias, blocks, self._stages)

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
        blocks = self.rotation_blocks()
        eye = torch.eye(self.base_layer.in_features, dtype=blocks.dtype, device=blocks.device)
        return _rotate_rows(eye, blocks, self._stages)[0]  # (I R^T)^T = R

    @torch.no_grad()
    def rotated_weight(self) -> Tensor:
        """W R^T in the base weight's dtype."""
        weight = self.base_layer.weight
        blocks = self.rotation_blocks().to(_compute_dtype(weight.dtype))
        return _rotate_rows(_rows(weight, blocks.dtype), blocks, self._stages)[0].t().to(weight.dtype)

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

