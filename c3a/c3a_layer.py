"""C3A adapter layer: a frozen nn.Linear plus a trainable block-circular delta.

`y = base(x) + x @ C(w)^T / d_in`, with C(w) the block-circulant matrix of the kernel w of
shape (d_out/p, d_in/p, p) (see docs/METHODS.md, "C3A", and `c3a.circular`).

`share_inputs(model)` links C3A layers that read the same input (query and value of an
attention block) so that their deltas are computed in one operator call (`SharedInput`).
The method `kind: c3a` (`C3A`) wraps the targeted linears, links them, and saves a PEFT adapter.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from c3a.circular import block_circular, block_circular_shared, circulant_matrix
from c3a.methods import Method, register
from c3a.modules import replace_linears

__all__ = ["KERNEL_INITS", "C3A", "C3ALinear", "SharedInput", "c3a_state_dict", "load_c3a_state_dict",
           "share_inputs"]

KERNEL_SUFFIX = "c3a_kernel"


# Kernel inits, fill(kernel, d_in, d_out); bounds follow the paper (Xavier over the whole
# layer) and PEFT. The keys of KERNEL_INITS are the inits C3ALinear accepts.
def _xavier_uniform(kernel: Tensor, d_in: int, d_out: int) -> None:
    a = math.sqrt(6.0 / (d_in + d_out))
    nn.init.uniform_(kernel, -a, a)


def _kaiming_uniform(kernel: Tensor, d_in: int, d_out: int) -> None:
    a = 1.0 / math.sqrt(d_in)
    nn.init.uniform_(kernel, -a, a)


KERNEL_INITS: dict[str, Callable[[Tensor, int, int], object]] = {
    "xavier_uniform": _xavier_uniform,
    "zeros": lambda kernel, d_in, d_out: nn.init.zeros_(kernel),
    "gaussian": lambda kernel, d_in, d_out: nn.init.normal_(kernel),
    "kaiming_uniform": _kaiming_uniform,
}


class C3ALinear(nn.Module):
    """C3A-adapted linear layer.

    The kernel is float32 whatever the base dtype (CPU torch has no bf16 FFT); the delta is
    cast to the base output dtype. `merge()` folds C/d_in into the base weight for inference.
    `reference_grad=True` reproduces PEFT's (incorrect for p >= 3) input gradient.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        block_size: int,
        init: str = "xavier_uniform",
        reference_grad: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"C3ALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        d_out, d_in = base_layer.out_features, base_layer.in_features
        if block_size <= 0 or d_in % block_size or d_out % block_size:
            raise ValueError(
                f"C3A block_size={block_size} is invalid for a Linear with in_features={d_in}, "
                f"out_features={d_out}: it must be a positive integer dividing both in_features "
                f"and out_features, i.e. a divisor of {math.gcd(d_in, d_out)}"
            )
        self.base_layer = base_layer.requires_grad_(False)
        self.block_size = block_size
        self.reference_grad = reference_grad
        self.merged = False
        self.shared_input: SharedInput | None = None
        self.c3a_kernel = nn.Parameter(
            torch.zeros(d_out // block_size, d_in // block_size, block_size,
                        dtype=torch.float32, device=base_layer.weight.device)
        )
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "xavier_uniform") -> None:
        """Initialise the kernel by one of `KERNEL_INITS`."""
        if init not in KERNEL_INITS:
            raise ValueError(f"unknown C3A init {init!r}; allowed: {', '.join(KERNEL_INITS)}")
        KERNEL_INITS[init](self.c3a_kernel, self.base_layer.in_features, self.base_layer.out_features)

    def delta_weight(self) -> Tensor:
        """C(w) / d_in, shaped like the base weight and in its dtype (built in float32)."""
        w = self.base_layer.weight
        return (circulant_matrix(self.c3a_kernel.float()) / w.shape[1]).to(w.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Add C/d_in to the base weight; forward then costs only the base matmul."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract C/d_in again (exact up to rounding in the base dtype)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        # torch.compile: each layer on its own (the group's bookkeeping of inputs and pending deltas
        # would break the graph; inductor may still fuse what the shared call saves)
        shared = self.shared_input is not None and not torch.compiler.is_compiling()
        delta = self.shared_input.delta(self, x) if shared else block_circular(
            x, self.scaled_kernel(), self.reference_grad)
        return out + delta.to(out.dtype)

    def scaled_kernel(self) -> Tensor:
        """w / d_in: C(w)/d_in = C(w/d_in), and scaling the tiny kernel is cheaper than the output."""
        return self.c3a_kernel / self.base_layer.in_features

    def extra_repr(self) -> str:
        m, n, p = self.c3a_kernel.shape
        return f"block_size={p}, blocks=({m}, {n}), merged={self.merged}"


class SharedInput:
    """C3A layers that read the same input tensor, e.g. query and value of one attention block.

    The first member called with x computes every unmerged member's delta in one
    `block_circular_shared` call (one FFT of x, one saved spectrum, one inverse FFT for the
    input gradient) and keeps the others' until they are called with that same tensor. A
    member called with another input leaves the group and computes alone from then on, so
    linking layers that do not share their input costs one wasted delta, never a wrong one.

    `share_inputs` also hooks the members' parent: within one forward of it, each member's
    delta is computed ahead at most once, and a member called a second time (DeBERTa's
    query_proj/key_proj on the relative-position embeddings) computes only its own delta;
    a delta computed ahead and never taken is dropped when the parent's forward ends.
    """

    def __init__(self, layers: list[C3ALinear]) -> None:
        self.layers = layers
        self._pending: dict[int, tuple[Tensor, int, Tensor]] = {}  # id(layer) -> (x, x's version, delta)
        self._served: set[int] | None = None  # members served in the parent's running forward; None outside

    def begin(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook of the parent: a new forward, nothing served yet."""
        self._pending, self._served = {}, set()

    def end(self, module: nn.Module, args: tuple, output: object) -> None:
        """Forward hook of the parent: drop what was computed ahead and never taken."""
        self._pending, self._served = {}, None

    def delta(self, layer: C3ALinear, x: Tensor) -> Tensor:
        version = 0 if x.is_inference() else x._version  # inference tensors have no version counter
        pending = self._pending.pop(id(layer), None)
        if pending is not None:
            if pending[0] is x and pending[1] == version:
                return pending[2]
            self.layers.remove(layer)
            layer.shared_input = None
            return block_circular(x, layer.scaled_kernel(), layer.reference_grad)
        served = self._served if self._served is not None else set()
        if id(layer) in served:  # a second call in this forward: nobody else reads this input
            return block_circular(x, layer.scaled_kernel(), layer.reference_grad)
        members = [m for m in self.layers if not m.merged and id(m) not in served]
        deltas = block_circular_shared(x, [m.scaled_kernel() for m in members], layer.reference_grad)
        self._pending.update({id(m): (x, version, d) for m, d in zip(members, deltas) if m is not layer})
        served.update(id(m) for m in members)
        return deltas[members.index(layer)]

    def __getstate__(self) -> dict:
        # copies and pickles of the model never carry a pending delta (a non-leaf tensor)
        return {"layers": self.layers, "_pending": {}, "_served": None}


def share_inputs(model: nn.Module) -> list[SharedInput]:
    """Link the C3A layers that are children of one module and have the same input width,
    block size and gradient mode (query and value of each attention block); returns the groups.
    The parent's forward hooks delimit a group's rounds (see `SharedInput`).
    """
    groups = []
    for parent in model.modules():
        siblings = defaultdict(list)
        for child in parent.children():
            if isinstance(child, C3ALinear) and child.shared_input is None:
                siblings[(child.base_layer.in_features, child.block_size, child.reference_grad)].append(child)
        for layers in siblings.values():
            if len(layers) > 1:
                group = SharedInput(layers)
                parent.register_forward_pre_hook(group.begin)
                parent.register_forward_hook(group.end)
                groups.append(group)
                for layer in layers:
                    layer.shared_input = group
    return groups


def c3a_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The trained C3A kernels of `model` (its `state_dict` entries ending in `c3a_kernel`)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] == KERNEL_SUFFIX}


def load_c3a_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load kernels saved by `c3a_state_dict` into a model with the same C3A layers.

    Strict: raises KeyError naming missing or unexpected keys, ValueError on shape mismatch.
    """
    own = {k: v for k, v in model.state_dict(keep_vars=True).items()
           if k.rsplit(".", 1)[-1] == KERNEL_SUFFIX}
    missing, unexpected = sorted(own.keys() - state_dict.keys()), sorted(state_dict.keys() - own.keys())
    if missing or unexpected:
        raise KeyError(f"C3A state dict mismatch: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for k, param in own.items():
            if param.shape != state_dict[k].shape:
                raise ValueError(f"{k}: expected shape {tuple(param.shape)}, got {tuple(state_dict[k].shape)}")
            param.copy_(state_dict[k])


@register("c3a")
class C3A(Method):
    """C3A on the targeted linears, with exactly one of `block_size` (p) and `blocks` (p = d_in / b)."""

    def build(
        self,
        model: nn.Module,
        target_modules: Sequence[str] | str = ("query", "value"),
        block_size: int | None = None,
        blocks: int | None = None,
        init: str = "xavier_uniform",
        reference_grad: bool = False,
    ) -> nn.Module:
        if (block_size is None) == (blocks is None):
            raise ValueError(f"C3A needs exactly one of block_size and blocks (got {block_size=}, {blocks=}); "
                             "set the other to null (method.block_size=P method.blocks=null)")

        def wrap(linear: nn.Linear) -> C3ALinear:
            p = block_size or linear.in_features // blocks
            if blocks and linear.in_features % blocks:
                raise ValueError(f"C3A blocks={blocks} does not divide the layer's input width {linear.in_features}")
            return C3ALinear(linear, p, init=init, reference_grad=reference_grad)

        replace_linears(model, target_modules, wrap)
        share_inputs(model)  # query and value read the same hidden states: one operator call per block
        return model

    def save(self, model: nn.Module, out_dir: Path, head_modules: Sequence[str]) -> None:
        """A PEFT C3A adapter (`export_peft`), the head as its `modules_to_save`."""
        from c3a.peft_export import export_peft

        export_peft(model, out_dir, modules_to_save=list(head_modules))
