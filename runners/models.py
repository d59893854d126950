"""Building models, tokenizers and the role layout from the `model` config group."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from c3a.modules import Layout
from runners.errors import HarnessError

FAMILY_DIR = Path(__file__).resolve().parents[1] / "conf" / "family"


def weights_source(model_cfg: DictConfig) -> str:
    """Where the pretrained weights named by `name_or_path` are read from: `local_dir` when set (a
    copy on this machine; not part of a run's identity, so runs on machines that keep the
    copy in different places are the same runs), else `name_or_path` itself (hub id or path)."""
    return model_cfg.get("local_dir") or model_cfg.name_or_path


def _unreadable(what: str, model_cfg: DictConfig, e: Exception) -> HarnessError:
    source = weights_source(model_cfg)
    where = "" if source == model_cfg.name_or_path else f" from {source!r}"
    return HarnessError(f"cannot {what} {model_cfg.name_or_path!r}{where}: {str(e).splitlines()[0]}")


def build_model(model_cfg: DictConfig, num_labels: int) -> PreTrainedModel:
    """Pretrained weights (`weights_source`), or random weights from the config when
    `pretrained=false` (from the yaml's `config` values if given: no download).
    `model.attn_implementation` (optional): e.g. eager, sdpa; unset = transformers' default."""
    attn = model_cfg.get("attn_implementation")
    kwargs = {"attn_implementation": attn} if attn else {}
    try:
        if model_cfg.pretrained:
            # float32 whatever the weights' dtype (transformers would keep a float16 one's)
            return AutoModelForSequenceClassification.from_pretrained(
                weights_source(model_cfg), num_labels=num_labels, dtype=torch.float32, **kwargs)
        if model_cfg.get("config"):
            values = OmegaConf.to_container(model_cfg.config)
            config = AutoConfig.for_model(**values, num_labels=num_labels)
        else:
            config = AutoConfig.from_pretrained(weights_source(model_cfg), num_labels=num_labels)
        return AutoModelForSequenceClassification.from_config(config, **kwargs)
    except (OSError, ValueError) as e:  # ValueError: e.g. an attn_implementation the model lacks (DeBERTa: sdpa)
        raise _unreadable("load model", model_cfg, e) from e


def build_tokenizer(model_cfg: DictConfig):
    try:
        return AutoTokenizer.from_pretrained(weights_source(model_cfg))
    except OSError as e:
        raise _unreadable("load tokenizer", model_cfg, e) from e


def pretrained_config(model_cfg: DictConfig) -> PretrainedConfig:
    """The model's transformers config without its weights: the yaml's `config` values, or
    the pretrained model's config.json."""
    try:
        if model_cfg.get("config"):
            return AutoConfig.for_model(**OmegaConf.to_container(model_cfg.config))
        return AutoConfig.from_pretrained(weights_source(model_cfg))
    except (OSError, ValueError) as e:
        raise _unreadable("read the config of model", model_cfg, e) from e


def family_of(model_cfg: DictConfig, model_type: str) -> DictConfig:
    """The model's family (conf/family/*.yaml): the one its yaml composes, which must serve
    its model_type, or (`family: null`, e.g. `model=hub`) the family listing that model_type."""
    if model_cfg.get("family"):
        family = model_cfg.family
        if model_type not in family.model_types:
            raise HarnessError(f"model {model_cfg.name}: family {family.name} serves model types "
                               f"{list(family.model_types)}, the pretrained model's model_type is {model_type!r}")
        return family
    families = [OmegaConf.load(path) for path in sorted(FAMILY_DIR.glob("*.yaml"))]
    for family in families:
        if model_type in family.model_types:
            return family
    known = ", ".join(sorted(t for f in families for t in f.model_types))
    raise HarnessError(f"model {model_cfg.name}: no family in conf/family serves model_type {model_type!r}; "
                       f"known model types: {known} (add a family file, see README)")


def model_layout(model_cfg: DictConfig) -> tuple[Layout, list[str]]:
    """Where the model keeps each role's linear (its family's names, its layer count) and
    its head modules (the model yaml's, else the family's)."""
    config = pretrained_config(model_cfg)
    family = family_of(model_cfg, config.model_type)
    layout = Layout(
        model=model_cfg.name,
        layers=family.layers,
        num_layers=model_cfg.get("num_layers") or config.num_hidden_layers,
        roles=dict(family.roles),
        fused={linear: list(roles) for linear, roles in family.fused.items()},
    )
    return layout, list(model_cfg.get("head_modules") or family.head)
