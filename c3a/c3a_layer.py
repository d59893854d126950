"""C3A adapter layer: a frozen nn.Linear plus a trainable block-circular delta.

`y = base(x) + x @ C(w)^T / d_in`, with C(w) the block-circulant matrix of the kernel w of
shape (d_out/p, d_in/p, p) (see docs/METHODS.md, "C3A", and `c3a.circular`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from c3a.circular import block_circular, circulant_matrix

__all__ = ["INITS", "C3ALinear", "c3a_state_dict", "load_c3a_state_dict"]

INITS = ("xavier_uniform", "zeros", "gaussian", "kaiming_uniform")
KERNEL_SUFFIX = "c3a_kernel"


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
        self.c3a_kernel = nn.Parameter(
            torch.zeros(d_out // block_size, d_in // block_size, block_size,
                        dtype=torch.float32, device=base_layer.weight.device)
        )
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "xavier_uniform") -> None:
        """Initialise the kernel; bounds follow the paper (Xavier over the whole layer) and PEFT."""
        d_out, d_in = self.base_layer.out_features, self.base_layer.in_features
        if init == "xavier_uniform":
            a = math.sqrt(6.0 / (d_in + d_out))
            nn.init.uniform_(self.c3a_kernel, -a, a)
        elif init == "zeros":
            nn.init.zeros_(self.c3a_kernel)
        elif init == "gaussian":
            nn.init.normal_(self.c3a_kernel)
        elif init == "kaiming_uniform":
            a = 1.0 / math.sqrt(d_in)
            nn.init.uniform_(self.c3a_kernel, -a, a)
        else:
            raise ValueError(f"unknown C3A init {init!r}; allowed: {', '.join(INITS)}")

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
        # C(w)/d_in = C(w/d_in): scaling the tiny kernel is cheaper than scaling the output
        delta = block_circular(x, self.c3a_kernel / x.shape[-1], self.reference_grad)
        return out + delta.to(out.dtype)

    def extra_repr(self) -> str:
        m, n, p = self.c3a_kernel.shape
        return f"block_size={p}, blocks=({m}, {n}), merged={self.merged}"


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
