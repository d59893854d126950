"""One interface through which every method is applied to a model.

A method is a `Method` registered under its `kind` (the `method.kind` of its YAML): it builds
(adds or unfreezes its parameters on a frozen model), declares which of its parameters must
not decay, and saves the trained state. Its layers may define `regularizer()`: `Adapted` adds
them up. Our own methods register next to their layers (C3A in `c3a_layer.py`, qGOFT/GOFT in
`givens.py`); the PEFT-backed methods, BitFit and full fine-tuning register here.

`apply_method(model, kind, head_modules, layout=..., roles=..., **options)` freezes the
backbone, lets the method build, makes the head trainable and returns an `Adapted` that tells
the trainer its parameter groups and its extra loss term. A method names roles (query,
value, ...); the model's `Layout` turns them into module names, and every role must be
adapted in every encoder layer, or nothing trains. Nothing here branches on a method.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import pkgutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from c3a.modules import Layout


class Method:
    """How one kind of method adapts a model. Subclass it, and register an instance under the
    kind its YAML names (`@register("kind")`): that is all the harness needs."""

    no_decay: tuple[str, ...] = ()  # fragments of the names of parameters kept out of weight decay

    def build(self, model: nn.Module, **options: Any) -> nn.Module:
        """Add or unfreeze the method's parameters on `model` (frozen) and return the model."""
        raise NotImplementedError

    def with_targets(self, options: dict[str, Any], targets: dict[str, str]) -> dict[str, Any]:
        """`options` with the roles' `target_modules` (and `feedforward_modules`) regexes."""
        return {**options, **targets}

    def save(self, model: nn.Module, out_dir: Path, head_modules: Sequence[str]) -> None:
        """Write the trained model to `out_dir`; by default the whole model (transformers'
        `save_pretrained`, loadable with `AutoModelForSequenceClassification.from_pretrained`)."""
        model.save_pretrained(out_dir)


METHODS: dict[str, Method] = {}


def register(kind: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: `METHODS[kind]` is an instance of the class."""
    def add(cls: type[Method]) -> type[Method]:
        METHODS[kind] = cls()
        return cls
    return add


@dataclass
class Adapted:
    """A model prepared for training with its parameters split the way the optimizer needs."""

    model: nn.Module
    kind: str                       # the key of its Method in METHODS
    head: list[nn.Parameter]        # classification head: own learning rate, not counted
    method: list[nn.Parameter]      # what the method trains (weight decay applies)
    method_no_decay: list[nn.Parameter]
    reg_lambda: float = 0.0
    head_modules: list[str] = dataclasses.field(default_factory=list)  # qualified names of the head
    roles: list[str] = dataclasses.field(default_factory=list)  # what the method adapted: these roles
    num_layers: int | None = None   # ... in each of this many encoder layers (None: no roles)

    @property
    def trainable_params(self) -> int:
        """The paper's '#params': every trainable parameter outside the head."""
        return sum(p.numel() for p in self.method + self.method_no_decay)

    def regularizer(self) -> torch.Tensor | float:
        """lambda * sum of the method layers' own penalties (0 for methods without one)."""
        if not self.reg_lambda:
            return 0.0
        terms = [m.regularizer() for m in self.model.modules() if hasattr(m, "regularizer")]
        return self.reg_lambda * torch.stack(terms).sum()

    def save(self, out_dir: str | Path) -> Path:
        """Write the trained state to `out_dir` (returned) in the method's own format (its
        `Method.save`): a PEFT adapter with the head as `modules_to_save`, loadable with
        `PeftModel.from_pretrained(base, out_dir)`, or the whole model with the method merged
        into its weights, loadable with `AutoModelForSequenceClassification.from_pretrained`."""
        out = Path(out_dir)
        METHODS[self.kind].save(self.model, out, self.head_modules)
        return out


@contextlib.contextmanager
def _peft_reads_deprecated_property() -> Iterator[None]:
    """PEFT's get_peft_model reads transformers' deprecated `is_gradient_checkpointing`, whose
    FutureWarning nobody using PEFT can act on: that one warning is ignored, every other shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


@register("peft")
class PeftMethod(Method):
    """Any PEFT tuner, from the PEFT config the YAML instantiates (`peft_config`)."""

    def build(self, model: nn.Module, peft_config: Any) -> nn.Module:
        from peft import get_peft_model

        with _peft_reads_deprecated_property():
            return get_peft_model(model, peft_config)

    def with_targets(self, options: dict[str, Any], targets: dict[str, str]) -> dict[str, Any]:
        # replace() re-runs the PEFT config's own validation
        return {**options, "peft_config": dataclasses.replace(options["peft_config"], **targets)}

    def save(self, model: nn.Module, out_dir: Path, head_modules: Sequence[str]) -> None:
        """The adapter with the head as PEFT's `modules_to_save`. The head trains in place (its
        parameter names, and so the resume checkpoints, stay the base model's), so the adapter
        is re-applied, with the head declared, to a copy of the trained model without it."""
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        trained = copy.deepcopy(model)
        config = trained.peft_config[trained.active_adapter]
        config = dataclasses.replace(config, modules_to_save=sorted({*(config.modules_to_save or []), *head_modules}))
        adapter = get_peft_model_state_dict(trained)
        with torch.random.fork_rng(devices=[]), _peft_reads_deprecated_property():  # the init is overwritten below
            saved = get_peft_model(trained.unload(), config)
        # the head as the copy holds it (trained), the adapter as trained
        set_peft_model_state_dict(saved, {**get_peft_model_state_dict(saved), **adapter})
        saved.save_pretrained(out_dir)


@register("bitfit")
class BitFit(Method):
    """Every bias of the backbone (LayerNorm biases included)."""

    def build(self, model: nn.Module) -> nn.Module:
        for name, param in model.named_parameters():
            if name.endswith(".bias") or name == "bias":
                param.requires_grad_(True)
        return model


@register("full")
class Full(Method):
    """Every parameter of the backbone."""

    def build(self, model: nn.Module) -> nn.Module:
        return model.requires_grad_(True)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def _is_adapted(module: nn.Module) -> bool:
    # after the backbone is frozen, only a module the method wrapped or replaced trains
    return any(p.requires_grad for p in module.parameters())


def _targets(layout: Layout, roles: Sequence[str], feedforward_roles: Sequence[str]) -> dict[str, str]:
    """The roles' `target_modules` regex (and (IA)3's `feedforward_modules`)."""
    if not set(feedforward_roles) <= set(roles):
        raise ValueError(f"feedforward_roles {list(feedforward_roles)} must be among roles {list(roles)}")
    targets = {"target_modules": layout.pattern(roles)}
    if feedforward_roles:
        targets["feedforward_modules"] = layout.pattern(feedforward_roles)
    return targets


def _import_method_modules() -> None:
    """Import every module of this package, so a method registers wherever its layer lives: a
    method of our own is its module plus its YAML, with no list of modules to edit."""
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__, f"{__package__}."):
        importlib.import_module(module.name)


def apply_method(
    model: nn.Module,
    kind: str,
    head_modules: Sequence[str] = ("classifier",),
    reg_lambda: float = 0.0,
    layout: Layout | None = None,
    roles: Sequence[str] = (),
    feedforward_roles: Sequence[str] = (),
    **options: Any,
) -> Adapted:
    """Apply method `kind` (a key of METHODS) to `model` in place.

    `head_modules` are the qualified names of the classification head (always trained);
    the method's `no_decay` names its parameters excluded from weight decay.
    `roles` (with the model's `layout`) name what the method adapts; before adapting, each
    role must be one nn.Linear in every encoder layer, and after it, each of those must
    train: otherwise ValueError naming the model, the role and what was found. Methods
    without roles (BitFit, full) and direct calls with `target_modules` skip the check.
    """
    if kind not in METHODS:
        _import_method_modules()
    if kind not in METHODS:
        raise ValueError(f"unknown method kind {kind!r}; allowed: {', '.join(METHODS)}")
    method = METHODS[kind]
    if roles:
        if layout is None:
            raise ValueError(f"the method names roles {list(roles)}: apply_method needs the model's layout")
        layout.check(model, roles, _is_linear, "an nn.Linear")
        options = method.with_targets(options, _targets(layout, roles, feedforward_roles))
    model.requires_grad_(False)
    model = method.build(model, **options)
    if roles:  # PEFT skips what it cannot wrap without a word: nothing may be left out
        layout.check(model, roles, _is_adapted, "an adapted module")

    head, decay, no_decay = [], [], []
    for name, param in model.named_parameters():
        # PEFT wraps the model (base_model.model.<name>): match the head anywhere in the name.
        if any(f".{h}." in f".{name}" for h in head_modules):
            param.requires_grad_(True)
            head.append(param)
        elif param.requires_grad:
            (no_decay if any(f in name for f in method.no_decay) else decay).append(param)
    if not head:
        raise ValueError(f"head_modules {list(head_modules)} matched no parameter of the model")
    return Adapted(model, kind, head, decay, no_decay, reg_lambda, list(head_modules), list(roles),
                   layout.num_layers if roles else None)
