"""C3ALinear: validation, inits, dtypes, merge, kernel save/load and PEFT export."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from peft import C3AConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from c3a.c3a_layer import C3ALinear, c3a_state_dict, load_c3a_state_dict, share_inputs
from c3a.circular import circulant_matrix
from c3a.methods import apply_method
from c3a.modules import replace_linears
from c3a.peft_export import export_peft

HIDDEN, P = 48, 12


def tiny_roberta(seed: int = 0) -> RobertaForSequenceClassification:
    torch.manual_seed(seed)
    config = RobertaConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                           vocab_size=100, max_position_embeddings=40, type_vocab_size=1, num_labels=2)
    return RobertaForSequenceClassification(config).eval()


def adapt(model: nn.Module, block_size: int = P) -> nn.Module:
    """Freeze the base, put C3A on query/value, train the head (as the experiments do)."""
    model.requires_grad_(False)
    replace_linears(model, ["query", "value"], lambda lin: C3ALinear(lin, block_size))
    model.classifier.requires_grad_(True)
    return model


def train_a_little(model: nn.Module, steps: int = 3) -> None:
    """A few real optimizer steps, so kernels and head hold trained (non-init) values."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ids, labels = torch.randint(0, 100, (4, 9)), torch.tensor([0, 1, 1, 0])
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    model.eval()


IDS = torch.randint(0, 100, (3, 11), generator=torch.Generator().manual_seed(123))


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("block_size", [5, 0, -12, 64])
def test_invalid_block_size_names_dims(block_size: int) -> None:
    with pytest.raises(ValueError) as err:
        C3ALinear(nn.Linear(48, 36), block_size)
    msg = str(err.value)
    assert f"block_size={block_size}" in msg and "in_features=48" in msg and "out_features=36" in msg
    assert "dividing both" in msg


def test_valid_layer_shapes_and_frozen_base() -> None:
    layer = C3ALinear(nn.Linear(48, 36), 12)
    assert layer.c3a_kernel.shape == (3, 4, 12) and layer.c3a_kernel.dtype == torch.float32
    assert not any(p.requires_grad for p in layer.base_layer.parameters())
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["c3a_kernel"]


def test_inits() -> None:
    torch.manual_seed(0)
    base = nn.Linear(768, 768)
    kernel = C3ALinear(base, 128).c3a_kernel
    bound = math.sqrt(6 / (768 + 768))
    assert bound == pytest.approx(0.0625)
    assert kernel.abs().max() <= bound and kernel.abs().max() > 0.99 * bound
    kaiming = C3ALinear(base, 128, init="kaiming_uniform").c3a_kernel
    assert kaiming.abs().max() <= 1 / math.sqrt(768) and kaiming.abs().max() > 0.99 / math.sqrt(768)
    gauss = C3ALinear(base, 128, init="gaussian").c3a_kernel
    assert gauss.std().item() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="xavier_uniform, zeros, gaussian, kaiming_uniform"):
        C3ALinear(base, 128, init="orthogonal")


def test_zeros_init_is_exact_noop() -> None:
    base = nn.Linear(48, 24)
    layer = C3ALinear(base, 12, init="zeros")
    x = torch.randn(2, 5, 48)
    assert torch.equal(layer(x), base(x))


def test_forward_equals_dense_delta() -> None:
    torch.manual_seed(1)
    base = nn.Linear(48, 24)
    layer = C3ALinear(base, 12, init="gaussian")
    x = torch.randn(2, 5, 48)
    expected = base(x).double() + x.double() @ circulant_matrix(layer.c3a_kernel.double()).T / 48
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_bf16_base() -> None:
    torch.manual_seed(2)
    base = nn.Linear(48, 24).bfloat16()
    layer = C3ALinear(base, 12, init="gaussian")
    x = torch.randn(3, 48).bfloat16().requires_grad_()
    y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = nn.functional.linear(x.float(), base.weight.float(), base.bias.float())
    expected = expected + x.float() @ circulant_matrix(layer.c3a_kernel).T / 48
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and layer.c3a_kernel.grad.dtype == torch.float32
    assert layer.delta_weight().dtype == torch.bfloat16


def test_merge_unmerge_round_trip() -> None:
    torch.manual_seed(3)
    layer = C3ALinear(nn.Linear(48, 24), 12, init="gaussian")
    original = layer.base_layer.weight.detach().clone()
    x = torch.randn(4, 48)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    merged = layer(x)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, layer.base_layer(x))  # merged forward: base only
    layer.merge()  # idempotent
    torch.testing.assert_close(layer(x), merged)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, original, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged)


def loss_and_grads(model: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # same dropout masks in both models
    loss = model(input_ids=IDS, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]


def test_shared_input_equals_separate_layers() -> None:
    """query and value linked by share_inputs: one operator call per block, same loss and grads."""
    separate = adapt(tiny_roberta())
    train_a_little(separate)
    linked = copy.deepcopy(separate)
    groups = share_inputs(linked)
    assert [len(g.layers) for g in groups] == [2, 2]
    loss_s, grads_s = loss_and_grads(separate)
    loss_l, grads_l = loss_and_grads(linked)
    torch.testing.assert_close(loss_l, loss_s, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_l, grads_s):  # float32 in a different order: tolerance on each tensor's scale
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
    assert all(not g._pending for g in groups)  # every delta computed ahead was taken
    assert all(len(g.layers) == 2 for g in groups)


def test_shared_input_in_any_call_order_and_a_member_reading_another_input_leaves() -> None:
    torch.manual_seed(6)
    block = nn.ModuleDict({"a": nn.Linear(24, 24), "b": nn.Linear(24, 12)})
    for name in ("a", "b"):
        block[name] = C3ALinear(block[name], 6, init="gaussian")
    (group,) = share_inputs(block)

    def expected(name: str, x: torch.Tensor) -> torch.Tensor:
        layer = block[name]
        return layer.base_layer(x) + x @ circulant_matrix(layer.c3a_kernel).T / 24

    x, h = torch.randn(3, 24), torch.randn(3, 24)
    for order in (["b", "a"], ["a", "b"]):  # one shared call, computed by whichever comes first
        for name in order:
            torch.testing.assert_close(block[name](x), expected(name, x), rtol=1e-5, atol=1e-6)
        assert not group._pending and len(group.layers) == 2
    for _ in range(2):  # b now reads h: it leaves the group and computes alone
        torch.testing.assert_close(block["a"](x), expected("a", x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(block["b"](h), expected("b", h), rtol=1e-5, atol=1e-6)
        assert group.layers == [block["a"]] and block["b"].shared_input is None


def test_shared_input_skips_merged_members_and_survives_deepcopy() -> None:
    model = adapt(tiny_roberta())
    train_a_little(model)
    expected = logits(model)
    share_inputs(model)
    attention = model.roberta.encoder.layer[0].attention.self
    attention.value.merge()
    torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)
    attention.value.unmerge()
    attention.query(torch.randn(2, HIDDEN))  # leaves value's delta pending
    twin = copy.deepcopy(model)  # a pending non-leaf tensor would make deepcopy fail
    assert not twin.roberta.encoder.layer[0].attention.self.query.shared_input._pending
    torch.testing.assert_close(logits(twin), expected, rtol=1e-5, atol=1e-5)


def test_apply_method_links_query_and_value() -> None:
    model = apply_method(tiny_roberta(), "c3a", target_modules=["query", "value"], block_size=P).model
    for layer in model.roberta.encoder.layer:
        attention = layer.attention.self
        assert attention.query.shared_input is attention.value.shared_input is not None


def test_delta_weight_matches_peft() -> None:
    torch.manual_seed(4)
    model = get_peft_model(tiny_roberta(), C3AConfig(block_size=P, target_modules=["query"], init_weights="gaussian"))
    peft_layer = model.get_base_model().roberta.encoder.layer[0].attention.self.query
    ours = C3ALinear(peft_layer.base_layer, P)
    with torch.no_grad():
        ours.c3a_kernel.copy_(peft_layer.c3a_kernel["default"])
    torch.testing.assert_close(ours.delta_weight(), peft_layer.get_delta_weight("default"), rtol=1e-5, atol=1e-6)


def test_kernel_save_load_into_fresh_model(tmp_path: Path) -> None:
    trained = adapt(tiny_roberta())
    train_a_little(trained)
    sd = c3a_state_dict(trained)
    assert len(sd) == 4 and all(k.endswith("c3a_kernel") for k in sd)
    torch.save(sd, tmp_path / "kernels.pt")

    fresh = adapt(tiny_roberta())
    fresh.classifier.load_state_dict(trained.classifier.state_dict())
    assert not torch.allclose(logits(fresh), logits(trained))
    load_c3a_state_dict(fresh, torch.load(tmp_path / "kernels.pt"))
    torch.testing.assert_close(logits(fresh), logits(trained))

    with pytest.raises(KeyError, match="missing"):
        load_c3a_state_dict(fresh, dict(list(sd.items())[1:]))
    with pytest.raises(KeyError, match="unexpected"):
        load_c3a_state_dict(fresh, {**sd, "extra.c3a_kernel": torch.zeros(1)})


def test_peft_export_reproduces_outputs(tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    tiny_roberta().save_pretrained(base_dir)
    model = adapt(AutoModelForSequenceClassification.from_pretrained(base_dir).eval())
    train_a_little(model)
    out = export_peft(model, tmp_path / "adapter", base_model_name_or_path=str(base_dir))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()

    config = C3AConfig.from_pretrained(out)
    assert config.block_size == P and set(config.target_modules) == {"query", "value"}
    assert config.modules_to_save == ["classifier"]
    loaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_dir), out).eval()
    torch.testing.assert_close(logits(loaded), logits(model), rtol=1e-5, atol=1e-5)


def test_peft_export_refuses_what_it_would_lose(tmp_path: Path) -> None:
    model = adapt(tiny_roberta())
    model.roberta.embeddings.LayerNorm.requires_grad_(True)
    with pytest.raises(ValueError, match="LayerNorm"):
        export_peft(model, tmp_path / "a")
    model.roberta.embeddings.LayerNorm.requires_grad_(False)
    model.roberta.encoder.layer[0].attention.self.query.merge()
    with pytest.raises(ValueError, match="unmerge"):
        export_peft(model, tmp_path / "b")
