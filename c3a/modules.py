"""Finding and replacing the linear layers a method adapts, and the roles that name them.

A method names *roles* (query, key, value, attn_out, ffn_in, ffn_out); a model's `Layout`
says which linear of each encoder layer plays each role (conf/family/*.yaml). `Layout.pattern`
turns roles into a target regex (our methods and PEFT's `target_modules` alike) and
`Layout.check` proves that every role matched exactly one linear in each encoder layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


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


@dataclass(frozen=True)
class Layout:
    """Where a model keeps the linear of each role inside its encoder layers.

    `layers` is the dotted name of the layer list (e.g. `encoder.layer`: the layers are
    `<anything>.encoder.layer.<i>`), `roles` maps a role to the linear's name inside one
    layer, `fused` maps a linear that computes several roles at once to those roles.
    """

    model: str
    layers: str
    num_layers: int
    roles: Mapping[str, str]
    fused: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def name(self, role: str) -> str:
        """The linear's name inside a layer; ValueError for a role this layout cannot serve."""
        if role in self.roles:
            return self.roles[role]
        for linear, together in self.fused.items():
            if role in together:
                raise ValueError(
                    f"model {self.model}: role {role!r} is computed by the fused linear {linear!r} together "
                    f"with {', '.join(r for r in together if r != role)}; this method needs it as its own linear")
        known = ", ".join(r for r in ROLES if r in self.roles)
        raise ValueError(f"model {self.model}: unknown role {role!r}; it has: {known}")

    def pattern(self, roles: Iterable[str]) -> str:
        """A regex matching the full module names of the roles' linears in every layer
        (group 1: the layer index), PEFT's `target_modules` rule for a string."""
        names = "|".join(re.escape(self.name(r)) for r in roles)
        return rf"(?:.*\.)?{re.escape(self.layers)}\.(\d+)\.(?:{names})"

    def layers_of(self, model: nn.Module, role: str, keep: Callable[[nn.Module], bool]) -> list[int]:
        """Layer index of every module kept by `keep` whose name is the role's linear (sorted)."""
        rx = re.compile(self.pattern([role]))
        return sorted(int(m.group(1)) for name, module in model.named_modules()
                      if (m := rx.fullmatch(name)) and keep(module))

    def check(self, model: nn.Module, roles: Iterable[str], keep: Callable[[nn.Module], bool], what: str) -> None:
        """Raise ValueError unless, for each role, exactly one module kept by `keep` sits at
        the role's name in each of the `num_layers` layers (`what` names the kept modules)."""
        roles = list(roles)
        names = [self.name(r) for r in roles]
        for name in names:
            if names.count(name) > 1:  # one linear adapted once would hide a role
                twins = [r for r, n in zip(roles, names) if n == name]
                raise ValueError(f"model {self.model}: roles {', '.join(twins)} all name the linear {name!r}")
        for role in roles:
            found = self.layers_of(model, role, keep)
            if found != list(range(self.num_layers)):
                seen = f"in layers {_ranges(found)}" if found else "nowhere"
                raise ValueError(
                    f"model {self.model}: role {role!r} ({self.layers}.<i>.{self.name(role)}) found {what} "
                    f"{len(found)} times, {seen}; expected one in each of its {self.num_layers} layers"
                    f"{self._hint(model)}")

    def _hint(self, model: nn.Module) -> str:
        """The linears the first layer does have, so a wrong name in a family file is easy to fix."""
        rx = re.compile(rf"(?:.*\.)?{re.escape(self.layers)}\.0\.(.+)")
        names = [m.group(1) for name, module in model.named_modules()
                 if isinstance(module, nn.Linear) and (m := rx.fullmatch(name))]
        return f" (linears in layer 0: {', '.join(names)})" if names else f" (no module named {self.layers}.0)"


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 5] -> '0-2, 5, 5': short enough for a one-line error."""
    parts, start = [], 0
    for i in range(1, len(indices) + 1):
        if i == len(indices) or indices[i] != indices[i - 1] + 1:
            a, b = indices[start], indices[i - 1]
            parts.append(f"{a}" if a == b else f"{a}-{b}")
            start = i
    return ", ".join(parts)
