"""Finding and replacing the linear layers a method adapts."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn


def matches(name: str, targets: Sequence[str] | str) -> bool:
    """PEFT's matching rule: a regex string must match the full name; a list entry must be
    the name itself or its dotted suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def replace_linears(
    model: nn.Module,
    targets: Sequence[str] | str,
    factory: Callable[[nn.Linear], nn.Module],
) -> list[str]:
    """Replace every `nn.Linear` whose qualified name matches `targets` by `factory(linear)`.

    Returns the replaced names; raises ValueError naming the targets when none matched.
    """
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and matches(name, targets)
    ]
    if not chosen:
        raise ValueError(f"target_modules {list(targets) if not isinstance(targets, str) else targets!r} "
                         "matched no nn.Linear in the model")
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, factory(module))
    return [name for name, _ in chosen]
