"""Build reference relevances with the ``lxt`` package itself (LXT 2.1, ``lxt.efficient``), as test fixtures.

The fixtures in ``tests/fixtures/lxt/<family>.safetensors`` are what ``tests/test_lxt_oracle.py`` compares
``lxt_fx.explain`` against; that test runs in the project's own environment (transformers 5) without
``lxt``. This script runs ONLY in a side environment, because ``lxt==2.1`` needs transformers < 5 (it imports
``transformers.modeling_attn_mask_utils``) and its declared dependencies (torchvision, open_clip, zennit,
bitsandbytes, ...) are not needed for the language-model patches.

Side environment (everything under the ignored ``.cache/``; torch pinned to the CPU wheel on disk — an
unpinned torch pulls a multi-GB CUDA build)::

    python3 -m venv .cache/lxt-venv
    printf 'torch==2.13.0\\ntransformers==4.57.6\\n' > .cache/lxt-constraints.txt
    PIP_NO_CACHE_DIR=1 .cache/lxt-venv/bin/pip install -c .cache/lxt-constraints.txt \\
        torch==2.13.0 transformers==4.57.6 safetensors
    PIP_NO_CACHE_DIR=1 .cache/lxt-venv/bin/pip install --no-deps lxt==2.1

(``bash benchmarks/lxt_oracle/make_env.sh`` runs exactly these.) ``import lxt.efficient`` then needs only a
stub ``torchvision`` (its ViT patch map imports ``torchvision.models.vision_transformer`` at import time);
this script writes that stub to ``.cache/lxt-stub/`` and puts it first on ``sys.path``: empty
``EncoderBlock``, ``VisionTransformer``, ``Encoder``, ``MLPBlock`` modules. ``zennit`` is missing; lxt only
warns (it is used by the ViT γ-rules alone). Nothing else is needed. Then, from the repository root::

    HF_HUB_OFFLINE=1 .cache/lxt-venv/bin/python benchmarks/lxt_oracle/build_fixtures.py

Each family runs in a fresh subprocess (``--family NAME``): LXT's patches are process-global and
irreversible (GPT-2's and BERT's patch ``torch.nn.LayerNorm.forward`` and ``torch.nn.Dropout.forward`` for
every model in the process), so families must not share a process.

What one family's fixture holds (float32, CPU, seeds fixed, eval mode, dropout off):

* ``weight/<state-dict key>``: the tiny random model (2 layers, hidden 32). After the HF init
  (``initializer_range`` 0.1) every norm weight is drawn around 1 (``1 + N(0, 0.1²)``; Gemma3's ``(1 + w)``
  parameterization gets ``w ~ N(0, 0.1²)``), every norm bias and every Linear / Conv1D bias ~ ``N(0, 0.05²)``,
  so biases and norm affines are not trivial. LLaMA and Qwen3 are built with ``attention_bias=True``
  (and LLaMA ``mlp_bias=True``), Qwen2 has its q/k/v biases, GPT-2 and BERT have biases everywhere.
* for each attention implementation (``eager``, ``sdpa``) and input set (``full``: 2 rows of 7 tokens, no
  mask given to the model; ``padded``: 3 rows of 8 tokens right-padded to lengths 8, 5, 3 with an
  ``attention_mask``), under ``case/<attn>/<inputs>/``: ``input_ids``, ``attention_mask`` (ones for
  ``full``), ``positions`` (last real token per row; 0 for BERT, whose classifier reads the [CLS] position),
  ``targets`` (argmax logit per row at that position, from the plain model), ``logits`` (the plain,
  unpatched transformers-4 forward: ``[B, L, V]`` causal LM, ``[B, num_labels]`` BERT), ``lxt_logits``
  (the patched model's forward) and ``relevance``: LXT's ``Σ_hidden(inputs_embeds ⊙ grad)`` per token,
  ``grad`` from seeding 1 on the target logit of each row of the patched model (summed over rows: rows do not
  interact), ``inputs_embeds = model.get_input_embeddings()(input_ids)`` (Gemma3's scaled embedding included).
* metadata: ``config`` (``config.to_dict()`` JSON), ``model_class``, ``family``, versions of lxt,
  transformers and torch.

Model classes: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM (text-only
Gemma3TextConfig), GPT2LMHeadModel, BertForSequenceClassification (3 labels; the explained scalar is one
class logit, read from the pooled [CLS] state). LXT's ``DEFAULT_MAP`` patch (AttnLRP) is used for each,
GPT-2 included (its ``attnLRP`` map is the default there; its ``cp_LRP`` map is only documented advice).
The torchvision ViT that LXT also patches is not built: the project's environment has no torchvision, so
the test could not rebuild the model.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "lxt"
STUB = ROOT / ".cache" / "lxt-stub"
FAMILIES = ["llama", "qwen2", "qwen3", "gemma3", "gpt2", "bert"]
ATTN = ["eager", "sdpa"]
VOCAB = 96

_STUB_VIT = '''"""Stub: only the names lxt.efficient.models.vit_torch imports (lxt-fx's LXT oracle builder)."""
from torch import nn


class EncoderBlock(nn.Module):
    pass


class VisionTransformer(nn.Module):
    pass


class Encoder(nn.Module):
    pass


class MLPBlock(nn.Module):
    pass
'''


def write_stub() -> None:
    """The stub ``torchvision`` that ``import lxt.efficient`` needs (no real torchvision is installed)."""
    models = STUB / "torchvision" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (STUB / "torchvision" / "__init__.py").write_text('"""Stub for lxt.efficient (no real torchvision)."""\n')
    (models / "__init__.py").write_text("from . import vision_transformer  # noqa: F401\n")
    (models / "vision_transformer.py").write_text(_STUB_VIT)


def make_config(family: str):
    """The tiny config of ``family`` (transformers 4.57 names)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64, initializer_range=0.1)
    decoder = dict(common, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
    if family == "llama":
        return tf.LlamaConfig(**decoder, attention_bias=True, mlp_bias=True), tf.LlamaForCausalLM
    if family == "qwen2":
        return tf.Qwen2Config(**decoder), tf.Qwen2ForCausalLM
    if family == "qwen3":
        return tf.Qwen3Config(**decoder, attention_bias=True), tf.Qwen3ForCausalLM
    if family == "gemma3":
        return tf.Gemma3TextConfig(**decoder, sliding_window=4, query_pre_attn_scalar=8,
                                   layer_types=["sliding_attention", "full_attention"]), tf.Gemma3ForCausalLM
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                             initializer_range=0.1, bos_token_id=0, eos_token_id=0), tf.GPT2LMHeadModel
    if family == "bert":
        return tf.BertConfig(**common, num_labels=3), tf.BertForSequenceClassification
    raise KeyError(family)


def perturb(model) -> None:
    """Norm weights around 1 (Gemma3's ``1 + w``: ``w`` around 0), norm and linear biases non-zero."""
    import torch

    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for module in model.modules():
            kind = type(module).__name__
            for pname, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g)
                if "Norm" in kind and pname == "weight":
                    p.copy_(noise * 0.1 if kind.startswith("Gemma3") else 1 + noise * 0.1)
                elif pname == "bias":
                    p.copy_(noise * 0.05)


def inputs() -> dict:
    """Input sets: ``full`` (2×7, no mask) and ``padded`` (3×8, right-padded to 8, 5, 3)."""
    import torch

    g = torch.Generator().manual_seed(5)
    full = torch.randint(3, VOCAB, (2, 7), generator=g)
    padded = torch.randint(3, VOCAB, (3, 8), generator=g)
    mask = torch.zeros_like(padded)
    for row, length in enumerate((8, 5, 3)):
        mask[row, :length] = 1
    padded = padded * mask  # pad id 0 on padding
    return {"full": (full, None), "padded": (padded, mask)}


def run_family(family: str) -> Path:
    """Build ``family``'s fixture in this process (call once per process: LXT patches globally)."""
    import torch

    sys.path.insert(0, str(STUB))
    torch.set_grad_enabled(True)
    import importlib.metadata as md

    import transformers as tf
    from safetensors.torch import save_file

    config, cls = make_config(family)
    configs = {attn: copy.deepcopy(config) for attn in ATTN}  # one each: a model reads its config at run time
    plain = {}
    for attn in ATTN:
        configs[attn]._attn_implementation = attn
        torch.manual_seed(0)
        model = cls(configs[attn]).eval()
        perturb(model)
        if not plain:
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        else:
            model.load_state_dict(state)
        plain[attn] = model

    tensors: dict[str, torch.Tensor] = {f"weight/{k}": v for k, v in state.items()}
    causal = family != "bert"
    refs = {}
    for attn, model in plain.items():
        for name, (ids, mask) in inputs().items():
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits if causal else \
                    model(input_ids=ids, attention_mask=mask).logits
            full_mask = torch.ones_like(ids) if mask is None else mask
            pos = (full_mask.sum(1) - 1) if causal else torch.zeros(ids.shape[0], dtype=torch.long)
            rows = torch.arange(ids.shape[0])
            picked = logits[rows, pos] if causal else logits
            refs[attn, name] = (ids, mask, full_mask, pos, picked.argmax(-1), logits)
        assert model.config._attn_implementation == attn

    import lxt.efficient  # after the stub is on sys.path

    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")  # LXT's patch key
    lxt.efficient.monkey_patch(module)
    for attn in ATTN:
        torch.manual_seed(0)
        model = getattr(module, cls.__name__)(configs[attn]).eval()
        assert model.config._attn_implementation == attn
        missing = model.load_state_dict(state, strict=True)
        assert not missing.missing_keys and not missing.unexpected_keys, missing
        for name in ("full", "padded"):
            ids, mask, full_mask, pos, targets, logits = refs[attn, name]
            emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            kwargs = dict(inputs_embeds=emb, attention_mask=mask)
            out = model(**kwargs, use_cache=False) if causal else model(**kwargs)
            rows = torch.arange(ids.shape[0])
            picked = out.logits[rows, pos] if causal else out.logits
            score = picked[rows, targets].sum()
            (grad,) = torch.autograd.grad(score, emb)
            relevance = (emb.detach() * grad).sum(-1)
            drift = (out.logits.detach() - logits).abs().max().item()
            pad = (relevance * (1 - full_mask)).abs().max().item()
            print(f"{family:7s} {attn:5s} {name:6s} |patched-plain logits| {drift:.2e}  "
                  f"sum R {relevance.sum(-1).tolist()}  max |R on padding| {pad:.1e}")
            prefix = f"case/{attn}/{name}/"
            tensors.update({prefix + "input_ids": ids, prefix + "attention_mask": full_mask,
                            prefix + "positions": pos, prefix + "targets": targets,
                            prefix + "logits": logits.contiguous(),
                            prefix + "lxt_logits": out.logits.detach().contiguous(),
                            prefix + "relevance": relevance.contiguous()})
            tensors[prefix + "mask_given"] = torch.tensor(mask is not None)
    config._attn_implementation = "eager"
    meta = {"family": family, "model_class": cls.__name__, "config": json.dumps(config.to_dict()),
            "lxt": md.version("lxt"), "transformers": tf.__version__, "torch": torch.__version__}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{family}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, help="build one family in this process")
    args = parser.parse_args()
    write_stub()
    if args.family:
        print(run_family(args.family))
        return
    for family in FAMILIES:  # one process each: LXT's patches are global
        subprocess.run([sys.executable, __file__, "--family", family], check=True)


if __name__ == "__main__":
    main()
