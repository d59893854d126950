"""Export a model adapted with `C3ALinear` as a PEFT C3A adapter directory.

The adapter is written by PEFT itself (C3AConfig + get_peft_model + save_pretrained on a copy
of the model with the C3A layers unwrapped), so the files follow whatever format the installed
PEFT expects, and `PeftModel.from_pretrained(base, out_dir)` reproduces the model's outputs.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import C3AConfig, get_peft_model
from torch import nn

from c3a.c3a_layer import C3ALinear
from c3a.modules import matches

__all__ = ["export_peft"]


def _target_modules(model: nn.Module, names: list[str]) -> list[str]:
    """Shortest PEFT target list: the layers' last name components when they select exactly
    these layers (e.g. ["query", "value"]), else the full names."""
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    selected = {n for n, _ in model.named_modules() if n and matches(n, suffixes)}
    return suffixes if selected == set(names) else sorted(names)


def export_peft(
    model: nn.Module,
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    *,
    modules_to_save: Sequence[str] | None = None,
) -> Path:
    """Write `model`'s C3A kernels (and trained head) as a PEFT adapter; return the directory.

    `modules_to_save`: modules trained in full and saved whole, as in PEFT (name or dotted
    suffix); default ["classifier"] when the model has such a module (sequence
    classification heads are trained from scratch). Every trainable parameter must be a C3A
    kernel or inside one of these modules, otherwise the export would silently drop it and
    ValueError is raised. Merged layers are refused: their base weights already hold C/d_in.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, C3ALinear)}
    if not layers:
        raise ValueError("model has no C3ALinear layers to export")
    merged = [n for n, m in layers.items() if m.merged]
    if merged:
        raise ValueError(f"unmerge C3A layers before exporting; merged: {merged}")
    if modules_to_save is None:
        modules_to_save = ["classifier"] if any(n.rsplit(".", 1)[-1] == "classifier"
                                                for n, _ in model.named_modules()) else []
    saved_modules = [n for n, _ in model.named_modules() if n and matches(n, list(modules_to_save))]
    if len(saved_modules) < len(modules_to_save):
        raise ValueError(f"modules_to_save {list(modules_to_save)} do not all name modules of the model")
    dropped = [
        n for n, p in model.named_parameters()
        if p.requires_grad and not n.endswith("c3a_kernel")
        and not any(n.startswith(s + ".") for s in saved_modules)
    ]
    if dropped:
        raise ValueError(f"trainable parameters outside C3A layers and modules_to_save would be lost: {dropped}")

    base = copy.deepcopy(model)
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent) if parent else base, child, copy.deepcopy(layer.base_layer))
    block_size, _ = Counter(m.block_size for m in layers.values()).most_common(1)[0]
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "name_or_path", None) or None
    config = C3AConfig(
        block_size=block_size,
        # PEFT falls back to an exact lookup of the full module name
        block_size_pattern={n: m.block_size for n, m in layers.items() if m.block_size != block_size},
        target_modules=_target_modules(base, list(layers)),
        modules_to_save=list(modules_to_save) or None,
        init_weights=True,  # zeros; overwritten below
        base_model_name_or_path=base_model_name_or_path,
    )
    peft_model = get_peft_model(base, config)
    inner = peft_model.get_base_model()
    with torch.no_grad():
        for name, layer in layers.items():
            inner.get_submodule(name).c3a_kernel["default"].copy_(layer.c3a_kernel)
    out = Path(out_dir)
    peft_model.save_pretrained(out)
    return out
