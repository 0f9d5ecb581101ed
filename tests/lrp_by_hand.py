"""AttnLRP written out by hand, layer by layer, in the explicit (relevance-in → relevance-out) form.

An independent oracle for ``lxt_fx.explain``: it imports nothing from ``lxt_fx``. Each function reads the
weights of a HuggingFace model, recomputes the forward pass itself (mirroring the model's own dtype casts so
the activations are the model's), then walks back from the explained logit with the AttnLRP equations
(Achtibat et al., ICML 2024), in float64:

- ε-rule (Eq. 8) for every linear map ``y = x Wᵀ + b``: ``R_x = x ⊙ (R_y / stab(y)) W``; the bias absorbs its
  share. ``stab(z) = z + ε·sign(z)``, ``sign(0) = 1``, ``ε = 1e-12``. An add ``y = a + b`` gives
  ``R_a = a / stab(y) · R_y`` and ``R_b = b / stab(y) · R_y``.
- identity (Eq. 9) for element-wise activations (SiLU, tanh-GELU): ``R_x = R_y``.
- RMSNorm (Prop. 3.4): the normalizing scale is a constant, ``R_x = R_y``. LayerNorm: ``y = (x − μ)·s·w + b``
  with ``s`` constant: bias absorbs (``R_c = c·s·w / stab(y) · R_y``), the centring ``c = x − mean(x)`` takes
  the ε-rule: ``R_x = x ⊙ (N − mean(N))``, ``N = R_c / stab(c)``.
- gated product ``gate ⊙ up`` (Prop. 3.2): ``R_gate = R_up = R_y / 2``.
- bilinear matmul ``y = A B`` with both operands carrying relevance (Prop. 3.3):
  ``N = R_y / stab(2y)``, ``R_A = (N Bᵀ) ⊙ A``, ``R_B = (Aᵀ N) ⊙ B``.
- softmax (Prop. 3.1, deep Taylor with bias at x): ``R_x = x ⊙ (R_p − p · Σ_j R_p_j)`` per row; masked
  entries get 0. This rule is not conservative: ``leak = Σ R_p − Σ R_x`` is returned so a test can check
  ``Σ R_input = score − Σ leaks`` (zero biases).

Shapes inside one sequence (no batch): hidden ``[L, H]``, heads ``[n_heads, L, d]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

EPS = 1e-12


def stab(z: Tensor) -> Tensor:
    """``z + ε·sign(z)`` with ``sign(0) = 1``."""
    return z + EPS * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def eps_linear(x: Tensor, weight: Tensor, y: Tensor, r_y: Tensor) -> Tensor:
    """ε-rule for ``y = x Wᵀ (+ b)``, ``weight = W`` of shape ``[out, in]``: ``R_x = x ⊙ (R_y / stab(y)) W``."""
    return x * ((r_y / stab(y)) @ weight)


def split_add(a: Tensor, b: Tensor, y: Tensor, r_y: Tensor) -> tuple[Tensor, Tensor]:
    """ε-rule for ``y = a + b``: ``R_a = a / stab(y) · R_y``, ``R_b = b / stab(y) · R_y``."""
    n = r_y / stab(y)
    return a * n, b * n


def bilinear(a: Tensor, b: Tensor, y: Tensor, r_y: Tensor) -> tuple[Tensor, Tensor]:
    """ε + uniform for ``y = a @ b``: ``N = R_y / stab(2y)``, ``R_a = (N bᵀ) ⊙ a``, ``R_b = (aᵀ N) ⊙ b``."""
    n = r_y / stab(2 * y)
    return (n @ b.transpose(-1, -2)) * a, (a.transpose(-1, -2) @ n) * b


def softmax_rule(x: Tensor, p: Tensor, r_p: Tensor, allowed: Tensor) -> Tensor:
    """Deep Taylor with bias at ``x`` for ``p = softmax(x)`` over the last dim; 0 where ``allowed`` is False."""
    r_x = x * (r_p - p * r_p.sum(-1, keepdim=True))
    return torch.where(allowed, r_x, torch.zeros((), dtype=r_x.dtype))


def layer_norm_rule(x: Tensor, weight: Tensor, bias: Tensor, eps: float, y: Tensor, r_y: Tensor) -> Tensor:
    """LayerNorm ``y = (x − μ)·s·w + b`` with ``s = 1/√(var + eps)`` constant (see the module docstring)."""
    c = x - x.mean(-1, keepdim=True)
    s = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    r_c = (c * s * weight) / stab(y) * r_y
    n = r_c / stab(c)
    return x * (n - n.mean(-1, keepdim=True))


@dataclass
class HandResult:
    """Relevance of the input embeddings ``[L, H]``, the explained score, the hand forward's logits and the
    total relevance the softmax rules leaked (``Σ R_p − Σ R_x`` summed over heads and layers)."""

    embedding_relevance: Tensor
    score: float
    logits: Tensor
    leak: float = 0.0
    leaks: list[float] = field(default_factory=list)


def _causal(length: int) -> Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()


def _attention_rule(q: Tensor, k: Tensor, v: Tensor, scaling: float, allowed: Tensor, scores: Tensor,
                    probs: Tensor, out: Tensor, r_out: Tensor, res: HandResult) -> tuple[Tensor, Tensor, Tensor]:
    """Relevance of ``q``, ``k``, ``v`` (``[heads, L, d]``, ``k``/``v`` already repeated per query head) for
    ``out = softmax(q kᵀ · scaling + mask) v``. ``scores`` is the pre-softmax ``q kᵀ · scaling``."""
    r_probs, r_v = bilinear(probs, v, out, r_out)
    r_scores = softmax_rule(scores, probs, r_probs, allowed)
    res.leaks.append(float(r_probs.sum() - r_scores.sum()))
    # scores = (q kᵀ) · scaling: the constant scale is linear (ε-rule: identity); q kᵀ is bilinear.
    r_q, r_kt = bilinear(q, k.transpose(-1, -2), scores / scaling, r_scores)
    return r_q, r_kt.transpose(-1, -2), r_v


def llama(model: torch.nn.Module, ids: Tensor, target: int) -> HandResult:
    """AttnLRP by hand for a ``LlamaForCausalLM`` (eager attention, GQA, RoPE, RMSNorm, SiLU-gated MLP) on one
    unpadded sequence ``ids [L]``, explaining ``logits[L-1, target]``."""
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    dtype = sd["model.embed_tokens.weight"].dtype
    length = ids.shape[0]
    n_heads, n_kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    rep = n_heads // n_kv
    scaling = d ** -0.5
    allowed = _causal(length)

    def rms(x: Tensor, w: Tensor) -> Tensor:  # the model computes the normalization in float32
        xf = x.to(torch.float32)
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)).to(dtype)

    # RoPE: cos/sin computed in float32 as the model does, then cast; rotate_half(x) = cat(-x2, x1).
    theta = cfg.rope_parameters["rope_theta"]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.arange(length).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)

    def rot(x: Tensor) -> Tensor:
        return torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)

    def rot_t(y: Tensor) -> Tensor:  # the transpose of rot: cat(y2, -y1)
        return torch.cat([y[..., d // 2:], -y[..., : d // 2]], -1)

    def heads(x: Tensor, n: int) -> Tensor:  # [L, n·d] → [n, L, d]
        return x.reshape(length, n, d).transpose(0, 1)

    def unheads(x: Tensor) -> Tensor:  # [n, L, d] → [L, n·d]
        return x.transpose(0, 1).reshape(length, -1)

    def repeat(x: Tensor) -> Tensor:  # kv head g serves query heads g·rep … g·rep + rep − 1
        return x.repeat_interleave(rep, dim=0)

    def unrepeat(r: Tensor) -> Tensor:  # relevance of a shared kv head: sum over its query heads
        return r.reshape(n_kv, rep, length, d).sum(1)

    # ---- forward, every activation kept ----
    h = sd["model.embed_tokens.weight"][ids]
    embeds = h
    saved = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
        n1 = rms(h, w["input_layernorm.weight"])
        q_lin, k_lin, v_lin = n1 @ w["self_attn.q_proj.weight"].T, n1 @ w["self_attn.k_proj.weight"].T, \
            n1 @ w["self_attn.v_proj.weight"].T
        q, k, v = heads(q_lin, n_heads), heads(k_lin, n_kv), heads(v_lin, n_kv)
        qr, kr = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        scores = (qr @ repeat(kr).transpose(-1, -2)) * scaling
        masked = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(masked.to(torch.float32), -1).to(dtype)
        out = probs @ repeat(v)
        attn = unheads(out)
        o = attn @ w["self_attn.o_proj.weight"].T
        h1 = h + o
        n2 = rms(h1, w["post_attention_layernorm.weight"])
        g, u = n2 @ w["mlp.gate_proj.weight"].T, n2 @ w["mlp.up_proj.weight"].T
        a = torch.nn.functional.silu(g)
        prod = a * u
        dn = prod @ w["mlp.down_proj.weight"].T
        h2 = h1 + dn
        saved.append(dict(w=w, h=h, n1=n1, q_lin=q_lin, k_lin=k_lin, v_lin=v_lin, q=q, k=k, v=v, qr=qr, kr=kr,
                          scores=scores, probs=probs, out=out, attn=attn, o=o, h1=h1, n2=n2, g=g, u=u, a=a,
                          prod=prod, dn=dn, h2=h2))
        h = h2
    nf = rms(h, sd["model.norm.weight"])
    lm = sd["lm_head.weight"] if "lm_head.weight" in sd else sd["model.embed_tokens.weight"]
    logits = nf @ lm.T

    # ---- backward: relevance in, relevance out ----
    score = logits[-1, target]
    r_logits = torch.zeros_like(logits)
    r_logits[-1, target] = score
    r_nf = eps_linear(nf, lm, logits, r_logits)
    r_h = r_nf  # final RMSNorm: identity
    res = HandResult(embedding_relevance=embeds, score=float(score), logits=logits)
    for s in reversed(saved):
        w = s["w"]
        r_h1, r_dn = split_add(s["h1"], s["dn"], s["h2"], r_h)
        r_prod = eps_linear(s["prod"], w["mlp.down_proj.weight"], s["dn"], r_dn)
        r_a = r_u = r_prod / 2  # uniform rule on gate ⊙ up
        r_g = r_a  # SiLU: identity
        r_n2 = eps_linear(s["n2"], w["mlp.gate_proj.weight"], s["g"], r_g) + \
            eps_linear(s["n2"], w["mlp.up_proj.weight"], s["u"], r_u)
        r_h1 = r_h1 + r_n2  # post-attention RMSNorm: identity
        r_h, r_o = split_add(s["h"], s["o"], s["h1"], r_h1)
        r_attn = eps_linear(s["attn"], w["self_attn.o_proj.weight"], s["o"], r_o)
        r_out = heads(r_attn, n_heads)
        r_qr, r_kr_rep, r_v_rep = _attention_rule(s["qr"], repeat(s["kr"]), repeat(s["v"]), scaling, allowed,
                                                  s["scores"], s["probs"], s["out"], r_out, res)
        r_kr, r_v = unrepeat(r_kr_rep), unrepeat(r_v_rep)
        # RoPE y = x·cos + rot(x)·sin is linear in x with constant cos/sin: ε-rule, R_x = x ⊙ Mᵀ(R_y/stab(y)).
        nq, nk = r_qr / stab(s["qr"]), r_kr / stab(s["kr"])
        r_q = s["q"] * (nq * cos + rot_t(nq * sin))
        r_k = s["k"] * (nk * cos + rot_t(nk * sin))
        r_n1 = eps_linear(s["n1"], w["self_attn.q_proj.weight"], s["q_lin"], unheads(r_q)) + \
            eps_linear(s["n1"], w["self_attn.k_proj.weight"], s["k_lin"], unheads(r_k)) + \
            eps_linear(s["n1"], w["self_attn.v_proj.weight"], s["v_lin"], unheads(r_v))
        r_h = r_h + r_n1  # input RMSNorm: identity
    res.embedding_relevance = r_h
    res.leak = sum(res.leaks)
    return res


def gpt2(model: torch.nn.Module, ids: Tensor, target: int) -> HandResult:
    """AttnLRP by hand for a ``GPT2LMHeadModel`` (eager attention, Conv1D = addmm with bias, LayerNorm,
    tanh-GELU, learned position embeddings, tied lm_head) on one unpadded sequence ``ids [L]``, explaining
    ``logits[L-1, target]``. The position embedding absorbs its share at ``h0 = wte[ids] + wpe[pos]``."""
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    length = ids.shape[0]
    n_heads = cfg.n_head
    d = cfg.n_embd // n_heads
    scaling = d ** -0.5
    allowed = _causal(length)
    eps = cfg.layer_norm_epsilon

    def ln(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)

    def heads(x: Tensor) -> Tensor:
        return x.reshape(length, n_heads, d).transpose(0, 1)

    def unheads(x: Tensor) -> Tensor:
        return x.transpose(0, 1).reshape(length, -1)

    def gelu_tanh(x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh((2.0 / torch.pi) ** 0.5 * (x + 0.044715 * x.pow(3))))

    embeds = sd["transformer.wte.weight"][ids]
    pos = sd["transformer.wpe.weight"][:length]
    h = embeds + pos
    h0 = h
    saved = []
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        w = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
        n1 = ln(h, w["ln_1.weight"], w["ln_1.bias"])
        qkv = n1 @ w["attn.c_attn.weight"] + w["attn.c_attn.bias"]  # Conv1D weight is [in, out]
        q, k, v = (heads(t) for t in qkv.split(cfg.n_embd, -1))
        scores = (q @ k.transpose(-1, -2)) * scaling
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
        out = probs @ v
        attn = unheads(out)
        o = attn @ w["attn.c_proj.weight"] + w["attn.c_proj.bias"]
        h1 = o + h
        n2 = ln(h1, w["ln_2.weight"], w["ln_2.bias"])
        f = n2 @ w["mlp.c_fc.weight"] + w["mlp.c_fc.bias"]
        a = gelu_tanh(f)
        m = a @ w["mlp.c_proj.weight"] + w["mlp.c_proj.bias"]
        h2 = h1 + m
        saved.append(dict(w=w, h=h, n1=n1, qkv=qkv, q=q, k=k, v=v, scores=scores, probs=probs, out=out,
                          attn=attn, o=o, h1=h1, n2=n2, f=f, a=a, m=m, h2=h2))
        h = h2
    nf = ln(h, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
    lm = sd["lm_head.weight"] if "lm_head.weight" in sd else sd["transformer.wte.weight"]
    logits = nf @ lm.T

    score = logits[-1, target]
    r_logits = torch.zeros_like(logits)
    r_logits[-1, target] = score
    r_h = layer_norm_rule(h, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"], eps, nf,
                          eps_linear(nf, lm, logits, r_logits))
    res = HandResult(embedding_relevance=embeds, score=float(score), logits=logits)
    for s in reversed(saved):
        w = s["w"]
        r_h1, r_m = split_add(s["h1"], s["m"], s["h2"], r_h)
        r_a = eps_linear(s["a"], w["mlp.c_proj.weight"].T, s["m"], r_m)
        r_f = r_a  # tanh-GELU: identity
        r_n2 = eps_linear(s["n2"], w["mlp.c_fc.weight"].T, s["f"], r_f)
        r_h1 = r_h1 + layer_norm_rule(s["h1"], w["ln_2.weight"], w["ln_2.bias"], eps, s["n2"], r_n2)
        r_o, r_h = split_add(s["o"], s["h"], s["h1"], r_h1)
        r_attn = eps_linear(s["attn"], w["attn.c_proj.weight"].T, s["o"], r_o)
        r_q, r_k, r_v = _attention_rule(s["q"], s["k"], s["v"], scaling, allowed, s["scores"], s["probs"],
                                        s["out"], heads(r_attn), res)
        r_qkv = torch.cat([unheads(r_q), unheads(r_k), unheads(r_v)], -1)
        r_n1 = eps_linear(s["n1"], w["attn.c_attn.weight"].T, s["qkv"], r_qkv)
        r_h = r_h + layer_norm_rule(s["h"], w["ln_1.weight"], w["ln_1.bias"], eps, s["n1"], r_n1)
    r_embeds, _ = split_add(embeds, pos, h0, r_h)
    res.embedding_relevance = r_embeds
    res.leak = sum(res.leaks)
    return res
