"""One interface through which every method is applied to a model.

`apply_method(model, kind, head_modules, layout=..., roles=..., **options)` freezes the
backbone, lets the method add or unfreeze its parameters, makes the head trainable and
returns an `Adapted` that tells the trainer its parameter groups and its extra loss term.
A method names roles (query, value, ...); the model's `Layout` turns them into module names,
and every role must be adapted in every encoder layer, or nothing trains. The runner never
branches on a method's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from c3a.c3a_layer import C3ALinear, share_inputs
from c3a.givens import GivensLinear
from c3a.modules import Layout, replace_linears


@dataclass
class Adapted:
    """A model prepared for training with its parameters split the way the optimizer needs."""

    model: nn.Module
    head: list[nn.Parameter]        # classification head: own learning rate, not counted
    method: list[nn.Parameter]      # what the method trains (weight decay applies)
    method_no_decay: list[nn.Parameter]
    reg_lambda: float = 0.0
    head_modules: list[str] = dataclasses.field(default_factory=list)  # qualified names of the head

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
        """Write the trained state to `out_dir` (returned) in the method's own format:
        a PEFT adapter (PEFT methods; C3A through `export_peft`) with the head as PEFT's
        `modules_to_save`, loadable with `PeftModel.from_pretrained(base, out_dir)`; otherwise
        the whole model with the method merged into its weights (transformers'
        `save_pretrained`, loadable with `AutoModelForSequenceClassification.from_pretrained`)."""
        import copy

        from peft import PeftModel
        from peft.utils.other import set_additional_trainable_modules

        from c3a.peft_export import export_peft

        out = Path(out_dir)
        if isinstance(self.model, PeftModel):
            # The head was trained in place, not through PEFT: declare it modules_to_save on a
            # copy so that PEFT saves (and later loads) it with the adapter.
            model = copy.deepcopy(self.model)
            name = model.active_adapter
            config = copy.copy(model.peft_config[name])
            config.modules_to_save = sorted({*(config.modules_to_save or []), *self.head_modules})
            model.peft_config[name] = config
            set_additional_trainable_modules(model, config, model.config, name)
            model.save_pretrained(out)
        elif any(isinstance(m, C3ALinear) for m in self.model.modules()):
            export_peft(self.model, out, modules_to_save=list(self.head_modules))
        else:  # no adapter format: merge the layers that have one (Givens) into plain linears
            model = copy.deepcopy(self.model)
            for layer_name, layer in list(model.named_modules()):
                if isinstance(layer, GivensLinear):
                    layer.merge()
                    parent, _, child = layer_name.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, child, layer.base_layer)
            model.save_pretrained(out)
        return out


def _peft(model: nn.Module, peft_config) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def _bitfit(model: nn.Module) -> nn.Module:
    for name, param in model.named_parameters():
        if name.endswith(".bias") or name == "bias":
            param.requires_grad_(True)
    return model


def _full(model: nn.Module) -> nn.Module:
    model.requires_grad_(True)
    return model


def _c3a(
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


def _givens(model: nn.Module, target_modules: Sequence[str] | str, variant: str = "qgoft") -> nn.Module:
    replace_linears(model, target_modules, lambda linear: GivensLinear(linear, variant=variant))
    return model


METHODS: dict[str, Callable[..., nn.Module]] = {
    "peft": _peft,
    "bitfit": _bitfit,
    "full": _full,
    "c3a": _c3a,
    "givens": _givens,
}


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def _is_adapted(module: nn.Module) -> bool:
    # after the backbone is frozen, only a module the method wrapped or replaced trains
    return any(p.requires_grad for p in module.parameters())


def _targets(kind: str, options: dict, layout: Layout, roles: Sequence[str],
             feedforward_roles: Sequence[str]) -> dict:
    """The method's options with its targets built from the roles: `target_modules` (and
    (IA)3's `feedforward_modules`) inside a PEFT config, or our methods' `target_modules`."""
    if not set(feedforward_roles) <= set(roles):
        raise ValueError(f"feedforward_roles {list(feedforward_roles)} must be among roles {list(roles)}")
    targets = {"target_modules": layout.pattern(roles)}
    if feedforward_roles:
        targets["feedforward_modules"] = layout.pattern(feedforward_roles)
    if kind == "peft":  # replace() re-runs the PEFT config's own validation
        return {**options, "peft_config": dataclasses.replace(options["peft_config"], **targets)}
    return {**options, **targets}


def apply_method(
    model: nn.Module,
    kind: str,
    head_modules: Sequence[str] = ("classifier",),
    reg_lambda: float = 0.0,
    no_decay: Sequence[str] = (),
    layout: Layout | None = None,
    roles: Sequence[str] = (),
    feedforward_roles: Sequence[str] = (),
    **options,
) -> Adapted:
    """Apply method `kind` (a key of METHODS) to `model` in place.

    `head_modules` are the qualified names of the classification head (always trained);
    `no_decay` lists name fragments of method parameters excluded from weight decay.
    `roles` (with the model's `layout`) name what the method adapts; before adapting, each
    role must be one nn.Linear in every encoder layer, and after it, each of those must
    train: otherwise ValueError naming the model, the role and what was found. Methods
    without roles (BitFit, full) and direct calls with `target_modules` skip the check.
    """
    if kind not in METHODS:
        raise ValueError(f"unknown method kind {kind!r}; allowed: {', '.join(METHODS)}")
    if roles:
        if layout is None:
            raise ValueError(f"the method names roles {list(roles)}: apply_method needs the model's layout")
        layout.check(model, roles, _is_linear, "an nn.Linear")
        options = _targets(kind, options, layout, roles, feedforward_roles)
    model.requires_grad_(False)
    model = METHODS[kind](model, **options)
    if roles:  # PEFT skips what it cannot wrap without a word: nothing may be left out
        layout.check(model, roles, _is_adapted, "an adapted module")

    head, method, method_no_decay = [], [], []
    for name, param in model.named_parameters():
        # PEFT wraps the model (base_model.model.<name>): match the head anywhere in the name.
        if any(f".{h}." in f".{name}" for h in head_modules):
            param.requires_grad_(True)
            head.append(param)
        elif param.requires_grad:
            (method_no_decay if any(f in name for f in no_decay) else method).append(param)
    if not head:
        raise ValueError(f"head_modules {list(head_modules)} matched no parameter of the model")
    return Adapted(model, head, method, method_no_decay, reg_lambda, list(head_modules))
