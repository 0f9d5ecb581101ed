"""AttnLRP with the MoE router held constant: the Mixtral default, chosen by ground truth.

A top-k MoE layer computes ``y = Σ_{j∈top-k} ŵ_j(x) · e_j(x)`` with ``ŵ = renorm(topk(softmax(W_g x)))``.
``attnlrp`` treats each ``ŵ_j · e_j`` as a product of two relevance-carrying tensors (uniform rule, paper
Prop. 3.2): ``R_{e_j} = R_{ŵ_j} = ½ · ŵ_j e_j ⊙ g``. The router's half then passes the renormalization
(identity, :class:`~lxt_fx.rules.Renormalize`), the top-k selection, and the router's softmax with the
deep-Taylor rule ``R_l = l ⊙ (R_p − p · Σ R_p)`` (Prop. 3.1), whose bias term ``p · Σ R_p`` is absorbed, and
lands through ``W_g`` on the token's own residual stream.

Here the routing weights are constants of the forward pass, as CP-LRP (Ali et al., ICML 2022) holds
attention weights constant — but only the router's (:func:`~.routing.routes_topk`: a softmax whose
probabilities feed a ``topk``; attention keeps AttnLRP's rules). With ``ŵ`` constant the layer is linear
in the expert outputs and conserves exactly:

    R_{e_j} = ŵ_j e_j ⊙ g,    Σ_j R_{e_j} = y ⊙ g = R_y,    R_router = 0.

The argument: the renormalized weights sum to one, so ``y = ē + Σ_j ŵ_j (e_j − ē)`` is a convex
combination of the expert outputs, like ``A · V`` with ``Σ_j A_ij = 1``; a change of routing can move
``y`` only by ``Σ_j δŵ_j (e_j − ē)`` (``Σ_j δŵ_j = 0``). The uniform rule instead hands the router half of
``ŵ_j e_j`` — the common part ``ē`` included, which no routing decision changes — and the softmax term
then absorbs most of it: on the trained ``recall-mixtral`` task the layer-1 router softmax absorbs 20 % of
the explained logit (the attention softmaxes 38 % and 18 %), 32 rows.

Chosen by ground truth (:mod:`lxt_fx.evaluate.groundtruth`, task ``recall-mixtral``: ``<bos> k₁ v₁ … k_P
v_P <?> k_q → v_q``, the mask the queried pair and the query key; mass accuracy ``Σ_{i∈mask} R_i⁺ /
Σ_i R_i⁺``, paired per row): the rule was found on the shipped model (6 pairs, seed 7) and checked on data
held out while choosing it — the same model on 4 pairs (128 rows, seed 99): 0.785 → 0.843, paired
+0.058 ± 0.014; a model trained from seed 1 with the task's own training code (128 rows): 0.787 → 0.846,
paired +0.058 ± 0.016 (``benchmarks/groundtruth_text_rules.py``, ``docs/groundtruth.md``). Registered for ``model_type == "mixtral"``
(:func:`~.registry.register_defaults`); the LXT-style generic ``attnlrp`` stays selectable by object or by
name (``composite="attnlrp"``) — LXT itself has no Mixtral rules to compare against.
"""

from __future__ import annotations

from ..rules import Stop
from .attnlrp import attnlrp
from .composite import Composite
from .routing import routes_topk

# A router's softmax over the experts, whose probabilities feed a top-k: constant (the routing weights).
ROUTER_SOFTMAX = routes_topk

router_constant = Composite([(ROUTER_SOFTMAX, Stop())]).extend(attnlrp, name="router_constant")
