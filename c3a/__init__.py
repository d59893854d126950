"""Adapters for GLUE fine-tuning, usable without Hydra.

- `block_circular(x, w)`: the C3A operator `x @ C(w)^T` with exact gradients
  (`block_circular_shared(x, kernels)`: several kernels on one input, in one call).
- `C3ALinear`, `GivensLinear`: layers wrapping a frozen `nn.Linear` (C3A; qGOFT/GOFT).
- `apply_method(model, kind, ...)`: the one interface through which every method (own,
  PEFT-backed, BitFit, full) is applied to a model; `Method`, `register`, `METHODS`: how a
  method declares itself (c3a/methods.py).
- `export_peft(model, dir)`: a trained C3A adapter in PEFT's format.
"""

# The public names; a method's module registers it when imported (`apply_method` imports every
# module of the package, so a new method needs no line here).
from c3a.c3a_layer import C3A, C3ALinear, SharedInput, c3a_state_dict, load_c3a_state_dict, share_inputs
from c3a.circular import block_circular, block_circular_shared, circulant_matrix
from c3a.givens import Givens, GivensLinear, givens_pairs, givens_state_dict, load_givens_state_dict
from c3a.methods import METHODS, Adapted, Method, apply_method, register
from c3a.peft_export import export_peft

__all__ = [
    "C3A",
    "METHODS",
    "Adapted",
    "C3ALinear",
    "Givens",
    "GivensLinear",
    "Method",
    "SharedInput",
    "apply_method",
    "block_circular",
    "block_circular_shared",
    "c3a_state_dict",
    "circulant_matrix",
    "export_peft",
    "givens_pairs",
    "givens_state_dict",
    "load_c3a_state_dict",
    "load_givens_state_dict",
    "register",
    "share_inputs",
]
