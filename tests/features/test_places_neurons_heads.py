"""Places, ``neurons`` and ``heads`` on tiny random LLaMA and GPT-2, against eager hooks and the explicit
ε-rule of the output projection."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import VOCAB, make_model

import lxt_fx
from lxt_fx import features
from lxt_fx.taps import CaptureNameError

MLP_IN = "model.layers.0.mlp.down_proj:input"


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", "eager")  # one model (one capture) for the module


def _gpt2():
    import transformers as tf

    cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(cfg).eval()


def _eager_input(model, path: str, ids: torch.Tensor) -> torch.Tensor:
    held = []
    handle = model.get_submodule(path).register_forward_pre_hook(lambda _m, a: held.append(a[0].detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return held[0]


def test_input_place_is_the_module_input_and_conserves_through_the_linear(llama) -> None:
    model = llama
    ids = torch.randint(0, VOCAB, (1, 7))
    att = lxt_fx.explain(model, ids, capture=[MLP_IN, "model.layers.0.mlp", "model.layers.*.mlp.down_proj:input"])
    assert set(att.latents) == {MLP_IN, "model.layers.0.mlp", "model.layers.1.mlp.down_proj:input"}
    x = _eager_input(model, "model.layers.0.mlp.down_proj", ids)
    torch.testing.assert_close(att.latent_value(MLP_IN), x, rtol=1e-5, atol=1e-6)  # the activation itself
    assert att.latent(MLP_IN).shape == (1, 7, 48)
    # down_proj has no bias: the ε → 0 rule passes all relevance from its output to its input
    out, inp = float(att.latent("model.layers.0.mlp").sum()), float(att.latent(MLP_IN).sum())
    assert abs(out) > 1e-6 and abs(inp - out) <= 1e-5 * abs(out) + 1e-8
    # the glob itself was kept as one entry per module it matched: reading it says which, not "not captured"
    with pytest.raises(CaptureNameError, match=r"is a glob: .*'model\.layers\.1\.mlp\.down_proj:input'") as info:
        att.latent("model.layers.*.mlp.down_proj:input")
    assert "no latent relevance captured" not in str(info.value)
    with pytest.raises(CaptureNameError, match="is a glob"):
        att.latent_value("model.layers.*.mlp.down_proj:input")


def test_unknown_place_names_close_matches(llama) -> None:
    model = llama
    ids = torch.randint(0, VOCAB, (1, 5))
    with pytest.raises(CaptureNameError, match=r"did you mean 'model.layers.0.mlp.down_proj:input'") as info:
        lxt_fx.explain(model, ids, capture=["model.layers.0.mlp.down_prj:input"])
    modules = {name.split(".")[0] for name, _ in model.named_modules() if name}
    top = re.search(r"top level: \[([^\]]*)\]", str(info.value)).group(1)
    assert {t.strip(" '") for t in top.split(",")} == modules  # the model's own modules, no torch.export marker
    with pytest.raises(CaptureNameError, match="model.layers.0.mlp"):
        features.ablate(model, "model.layers.0.mpl", [0]).__enter__()
    assert issubclass(CaptureNameError, lxt_fx.LXTError)


def test_neurons_rank_by_summed_relevance_with_eager_activation(llama) -> None:
    model = llama
    ids = torch.randint(0, VOCAB, (1, 7))
    att = lxt_fx.explain(model, ids, capture=[MLP_IN])
    top = features.neurons(att, MLP_IN, k=48)
    rel = [n.relevance for n in top]
    assert rel == sorted(rel, reverse=True) and len({n.index for n in top}) == 48
    assert abs(sum(rel) - float(att.latent(MLP_IN).sum())) <= 1e-4 * float(att.latent(MLP_IN).abs().sum())
    x = _eager_input(model, "model.layers.0.mlp.down_proj", ids)[0]
    for n in top[:3]:
        assert n.activation == pytest.approx(float(x[:, n.index].sum()), rel=1e-4, abs=1e-6)
    at3 = features.neurons(att, MLP_IN, k=1, position=3)[0]
    assert at3.relevance == pytest.approx(float(att.latent(MLP_IN)[0, 3].max()))
    assert at3.activation == pytest.approx(float(x[3, at3.index]), rel=1e-5, abs=1e-7)
    with pytest.raises(features.PlaceError):
        features.neurons(att, MLP_IN, position=9)


def _heads_by_epsilon_rule(model, ids, o_proj_paths: list[str], heads: int) -> torch.Tensor:
    """Head relevance from the explicit ε-rule of each output projection: R_in[c] = x_c Σ_j W_jc R_out_j / y_j
    (no bias), with R_out, y captured at the projection's output and x at its input."""
    att = lxt_fx.explain(model, ids, capture=o_proj_paths + [p + ":input" for p in o_proj_paths])
    rows = []
    for path in o_proj_paths:
        module = model.get_submodule(path)
        weight = module.weight if isinstance(module, torch.nn.Linear) else module.weight.T  # Conv1D: [in, out]
        y, r_out = att.latent_value(path), att.latent(path)
        x = att.latent_value(path + ":input").reshape(*y.shape[:-1], -1)
        z = (r_out / y) @ weight.detach()
        rows.append((x * z).reshape(x.shape[0], x.shape[1], heads, -1).sum((1, 3))[0])
    return torch.stack(rows)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_heads_equal_the_explicit_rule_split_by_head(family: str, llama) -> None:
    model = llama if family == "llama" else _gpt2()
    ids = torch.randint(0, VOCAB, (1, 6))
    got = features.heads(model, ids)
    assert got.shape == (2, 4)
    paths = ([f"model.layers.{i}.self_attn.o_proj" for i in range(2)] if family == "llama"
             else [f"transformer.h.{i}.attn.c_proj" for i in range(2)])
    if family == "gpt2":  # Conv1D has a bias: zero it in the reference's model and ours alike
        for p in paths:
            torch.nn.init.zeros_(model.get_submodule(p).bias)
        got = features.heads(model, ids)
    want = _heads_by_epsilon_rule(model, ids, paths, 4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert got.abs().sum() > 0
    batch = features.heads(model, torch.cat([ids, ids]))
    assert batch.shape == (2, 2, 4)
    torch.testing.assert_close(batch[1], got, rtol=1e-5, atol=1e-7)


def test_attention_places_found_in_sdpa_and_eager(llama) -> None:
    for attn in ("sdpa", "eager"):
        model = make_model("llama", attn) if attn == "sdpa" else llama
        places = features.attention_places(features.graph_for(model, torch.randint(0, VOCAB, (1, 4))))
        assert [p.path for p in places] == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
        assert all(p.heads == 4 for p in places)
