"""Roles: each method adapts exactly the linears its roles name, on every model family."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

import c3a.c3a_layer
from conftest import ROOT, compose
from runners.errors import HarnessError
from runners.job import adapted_model

SMALL = [f"model.config.{k}={v}" for k, v in dict(  # widths divisible by every method's blocks
    num_hidden_layers=2, hidden_size=96, intermediate_size=192, num_attention_heads=4, vocab_size=1000).items()]
DISTIL_SMALL = [f"model.config.{k}={v}" for k, v in dict(
    n_layers=2, dim=96, hidden_dim=192, n_heads=4, vocab_size=1000).items()]
BERT_NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
              "attn_out": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
# Written by hand from transformers' modeling code, not read from conf/family.
MODELS = {  # model -> (overrides, layers, full name of a layer's linear, names per role)
    "minilm": ([], 6, "bert.encoder.layer.{i}.{name}", BERT_NAMES),
    "roberta-base": (SMALL, 2, "roberta.encoder.layer.{i}.{name}", BERT_NAMES),
    "deberta-v3-base": ([*SMALL, "model.config.pooler_hidden_size=96"], 2, "deberta.encoder.layer.{i}.{name}", {
        "query": "attention.self.query_proj", "key": "attention.self.key_proj",
        "value": "attention.self.value_proj", "attn_out": "attention.output.dense",
        "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}),
    "distilbert-base": (DISTIL_SMALL, 2, "distilbert.transformer.layer.{i}.{name}", {
        "query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
        "attn_out": "attention.out_lin", "ffn_in": "ffn.lin1", "ffn_out": "ffn.lin2"}),
}
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
SIX = ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
EXPECTED_ROLES = {"lora": ["query", "value"], "vera": ["query", "value"], "boft": ["query", "value"],
                  "c3a": ["query", "value"], "c3a_b1": ["query", "value"], "c3a_b6": ["query", "value"],
                  "c3a_b8": ["query", "value"], "ia3": SIX, "qgoft": SIX, "goft": SIX, "lora_r2": SIX,
                  "oft_b8": SIX}


def small(model: str, method: str, *extra: str):
    overrides, *_ = MODELS[model]
    return compose(f"model={model}", f"method={method}", "model.pretrained=false", *overrides, *extra)


def adapted_modules(adapted) -> dict[str, list[str]]:
    """Module name (PEFT's prefix removed) -> trainable parameter names under it, head excluded."""
    head = {id(p) for p in adapted.head}
    owners: dict[str, list[str]] = {}
    for name, param in adapted.model.named_parameters():
        if param.requires_grad and id(param) not in head:
            name = name.removeprefix("base_model.model.")
            owners.setdefault(name, []).append(name)
    return owners


def test_role_list_is_what_the_method_files_say() -> None:
    composed = {m: compose(f"method={m}").method.get("roles") for m in METHODS}
    assert {m: list(roles) for m, roles in composed.items() if roles} == EXPECTED_ROLES
    assert composed["bitfit"] is None and composed["full"] is None  # every bias / everything
    assert list(compose("method=ia3").method.feedforward_roles) == ["ffn_out"]


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", sorted(EXPECTED_ROLES))
def test_method_adapts_exactly_its_roles_in_every_layer(model: str, method: str) -> None:
    _, layers, pattern, names = MODELS[model]
    adapted = adapted_model(small(model, method))
    targets = {(r, i): pattern.format(i=i, name=names[r]) for r in EXPECTED_ROLES[method] for i in range(layers)}
    trainable = adapted_modules(adapted)
    hits = {key: [p for p in trainable if p.startswith(t + ".")] for key, t in targets.items()}
    outside = [p for p in trainable if not any(p.startswith(t + ".") for t in targets.values())]
    assert not outside  # nothing but the roles' linears trains
    per_role = {r: sorted(i for (role, i), ps in hits.items() if role == r and ps) for r in EXPECTED_ROLES[method]}
    assert per_role == {r: list(range(layers)) for r in EXPECTED_ROLES[method]}  # every role, every layer


@pytest.mark.parametrize("method", ["lora", "ia3", "qgoft", "c3a_b6"])
def test_a_wrong_role_name_stops_before_training(method: str) -> None:
    cfg = small("roberta-base", method, "model.family.roles.value=attention.self.v")
    with pytest.raises(HarnessError, match=re.escape(
            "model roberta-base: role 'value' (encoder.layer.<i>.attention.self.v) found an nn.Linear 0 times, "
            "nowhere; expected one in each of its 2 layers (linears in layer 0: attention.self.query")):
        adapted_model(cfg)


def test_a_wrong_layer_count_and_a_role_named_twice_stop() -> None:
    with pytest.raises(HarnessError, match=r"role 'query' .* found an nn.Linear 2 times, in layers 0-1; "
                                           r"expected one in each of its 3 layers"):
        adapted_model(small("roberta-base", "lora", "model.num_layers=3"))
    with pytest.raises(HarnessError, match="roles attn_out, ffn_out all name the linear 'attention.output.dense'"):
        adapted_model(small("roberta-base", "qgoft", "model.family.roles.ffn_out=attention.output.dense"))


def test_peft_leaving_a_layer_out_stops() -> None:
    """PEFT adapts what it is told and says nothing about the rest: the check after it counts."""
    cfg = small("deberta-v3-base", "lora", r"+method.peft_config.exclude_modules=.*layer\.1\..*")
    with pytest.raises(HarnessError, match=r"role 'query' .* found an adapted module 1 times, in layers 0;"):
        adapted_model(cfg)


@pytest.mark.parametrize("method", METHODS)
def test_deberta_forward_backward_for_every_method(method: str) -> None:
    adapted = adapted_model(small("deberta-v3-base", method))
    model = adapted.model.train()
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=torch.tensor([0, 1])).loss + adapted.regularizer()
    loss.backward()
    assert torch.isfinite(loss)
    params = adapted.method + adapted.method_no_decay
    assert params and all(p.grad is not None for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)


def test_c3a_on_deberta_computes_no_delta_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeBERTa calls query_proj again on the relative-position embeddings: that call computes
    query's delta alone; value's delta is computed once per forward (with query's, shared)."""
    calls = []
    shared, single = c3a.c3a_layer.block_circular_shared, c3a.c3a_layer.block_circular

    def count_shared(x, kernels, *args):
        calls.append((tuple(x.shape[:-1]), len(kernels)))
        return shared(x, kernels, *args)

    def count_single(x, kernel, *args):
        calls.append((tuple(x.shape[:-1]), 1))
        return single(x, kernel, *args)

    monkeypatch.setattr(c3a.c3a_layer, "block_circular_shared", count_shared)
    monkeypatch.setattr(c3a.c3a_layer, "block_circular", count_single)
    adapted = adapted_model(small("deberta-v3-base", "c3a_b6"))
    model = adapted.model.train()
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        calls.clear()
        model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
        rel = 2 * model.config.position_buckets
        assert calls == [((2, 9), 2), ((1, rel), 1)] * 2  # per layer: q+v on tokens, q alone on positions
    groups = {id(m.shared_input): m.shared_input for m in model.modules() if getattr(m, "shared_input", None)}
    assert len(groups) == 2 and all(len(g.layers) == 2 and not g._pending for g in groups.values())


def test_c3a_shared_call_on_deberta_equals_separate_layers() -> None:
    def loss_and_grads(link: bool):
        adapted = adapted_model(small("deberta-v3-base", "c3a_b6", "method.init=gaussian"))
        model = adapted.model.train()
        if not link:
            for m in model.modules():
                if getattr(m, "shared_input", None):
                    m.shared_input = None
        torch.manual_seed(1)  # same dropout masks
        ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
        loss = model(input_ids=ids, labels=torch.tensor([0, 1])).loss
        loss.backward()
        return loss.detach(), [p.grad for p in adapted.method]

    (loss_l, grads_l), (loss_s, grads_s) = loss_and_grads(True), loss_and_grads(False)
    torch.testing.assert_close(loss_l, loss_s, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_l, grads_s):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())


def save_config(path: Path, model_type: str, **values) -> str:
    AutoConfig.for_model(model_type, **values).save_pretrained(path)
    return str(path)


def test_hub_picks_the_family_from_the_checkpoint_model_type(tmp_path: Path) -> None:
    path = save_config(tmp_path, "deberta-v2", hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=192, vocab_size=1000, relative_attention=True, position_buckets=16,
                       share_att_key=True, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm")
    cfg = compose("model=hub", f"model.name_or_path={path}", "model.pretrained=false", "method=qgoft")
    adapted = adapted_model(cfg)
    trainable = adapted_modules(adapted)
    assert len(trainable) == 2 * 6 and all(".attention.self.query_proj." in p for p in trainable if "query" in p)
    assert {p for p in adapted.model.state_dict() if p.startswith("pooler.")} <= {
        n for n, q in adapted.model.named_parameters() if q.requires_grad}  # the family's head trains


def test_a_fused_layout_and_an_unknown_model_type_get_clear_errors(tmp_path: Path) -> None:
    modern = save_config(tmp_path / "modernbert", "modernbert", hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128, vocab_size=100, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    hub = ["model=hub", f"model.name_or_path={modern}", "model.pretrained=false"]
    with pytest.raises(HarnessError, match="model .*modernbert: role 'query' is computed by the fused linear "
                                           "'attn.Wqkv' together with key, value"):
        adapted_model(compose(*hub, "method=lora"))
    assert adapted_model(compose(*hub, "method=full")).trainable_params > 0  # no roles: fine
    albert = save_config(tmp_path / "albert", "albert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, vocab_size=100, embedding_size=32)
    with pytest.raises(HarnessError, match="no family in conf/family serves model_type 'albert'; known model "
                                           "types: bert, deberta-v2, distilbert, modernbert, roberta, xlm-roberta"):
        adapted_model(compose("model=hub", f"model.name_or_path={albert}", "model.pretrained=false", "method=lora"))


def test_wrong_module_names_make_mode_count_fail_with_one_error_line(job) -> None:
    run = job("mode=count", "method=lora", "model=deberta-v3-base", "model.pretrained=false", *SMALL,
              "model.family.roles.query=attention.self.query")
    assert run.result == {"status": "failed", "record": None}  # run.py exits 1 on it; count mode writes no record
    assert "trainable_params" not in run.out and "Traceback" not in run.err
    assert len(run.errors) == 1 and "model deberta-v3-base: role 'query'" in run.errors[0], run.out + run.err
