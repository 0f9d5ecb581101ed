"""Why a retriever matched: a bi-encoder's query–passage similarity explained on both sides in one backward.

``explain_similarity(encoder, query, passage, tokenizer=tok, pooling="mean")`` runs the query and the passage
as the two rows of one batch through the rewritten encoder and explains their similarity with
:class:`~lxt_fx.targets.PairSimilarity` (the uniform rule splits the product of the two embeddings, the
norm of each is a constant): row 0 holds the query's tokens, row 1 the passage's, and their relevances add
up to the similarity (exactly, with zero biases). A sentence-transformers ``SentenceTransformer`` is taken
as it is: its transformer module, tokenizer, pooling mode, ``Normalize`` module and similarity function
are read from it.

A cross-encoder (a reranker, a sequence-pair classifier) needs nothing of this: ``explain(model, (query,
passage), tokenizer=tok)`` explains its score, and ``Attribution.segment_relevance()`` splits it by text.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .attribution import Attribution
from .explain import InputError, explain
from .targets import PairSimilarity


def _modules(model: nn.Module) -> list[nn.Module]:
    return list(model.children()) if isinstance(model, nn.Sequential) else []


def is_sentence_transformer(model: Any) -> bool:
    """Whether ``model`` is a sentence-transformers ``SentenceTransformer`` (an ``nn.Sequential`` whose first
    module holds the HF model as ``auto_model``), checked without importing sentence-transformers."""
    first = _modules(model)[:1]
    return bool(first) and isinstance(getattr(first[0], "auto_model", None), nn.Module)


def sentence_transformer_parts(model: nn.Module) -> tuple[nn.Module, Any, str, str]:
    """``(HF encoder, tokenizer, pooling, similarity)`` of a ``SentenceTransformer``: pooling from its
    ``Pooling`` module (mean, cls or last token), cosine when it ends in ``Normalize`` or its
    ``similarity_fn_name`` is cosine, else dot. :class:`~lxt_fx.explain.InputError` for modules this
    explanation does not follow (a Dense projection, max pooling, weighted mean)."""
    modules = _modules(model)
    encoder = modules[0].auto_model
    tokenizer = getattr(model, "tokenizer", None) or getattr(modules[0], "tokenizer", None)
    pooling, normalize = "cls", False
    for module in modules[1:]:
        name = type(module).__name__
        if name == "Pooling":
            mode = module.get_pooling_mode_str() if hasattr(module, "get_pooling_mode_str") else \
                getattr(module, "pooling_mode", "mean")
            found = {"mean": "mean", "cls": "cls", "lasttoken": "last"}.get(str(mode))
            if found is None:
                raise InputError(f"the SentenceTransformer pools with {mode!r}: explain_similarity follows mean, "
                                 "cls and last-token pooling; pass the HF encoder with pooling=... instead")
            pooling = found
        elif name == "Normalize":
            normalize = True
        else:
            raise InputError(f"the SentenceTransformer has a {name} module after pooling, which "
                             "explain_similarity does not follow: explain a Function target of the HF encoder")
    fn = str(getattr(model, "similarity_fn_name", None) or "cosine")
    if fn not in ("cosine", "dot"):
        raise InputError(f"the SentenceTransformer's similarity is {fn!r}: explain_similarity explains cosine or "
                         "dot product")
    return encoder, tokenizer, pooling, "cosine" if normalize or fn == "cosine" else "dot"


def explain_similarity(model: nn.Module, query: str, passage: str, *, tokenizer: Any = None,
                       pooling: str | None = None, similarity: str | None = None, composite: Any = None,
                       strict: bool = False) -> Attribution:
    """The similarity of ``query`` and ``passage`` under a bi-encoder, explained on both sides from one
    backward pass (see the module doc): row 0 of the result is the query, row 1 the passage; each row's
    ``target_scores`` is its half of the similarity and the two add up to it.

    ``model``: any HF encoder (``AutoModel``: it returns ``last_hidden_state``) with ``tokenizer``,
    ``pooling`` (``"mean"`` (default), ``"cls"``, ``"last"``) and ``similarity`` (``"cosine"`` (default) or
    ``"dot"``), or a ``SentenceTransformer``, whose own tokenizer, pooling and similarity are used unless
    given."""
    if is_sentence_transformer(model):
        encoder, own_tokenizer, own_pooling, own_similarity = sentence_transformer_parts(model)
        model = encoder
        tokenizer = tokenizer if tokenizer is not None else own_tokenizer
        pooling = pooling or own_pooling
        similarity = similarity or own_similarity
    if not isinstance(query, str) or not isinstance(passage, str):
        raise InputError("explain_similarity takes the query and the passage as two texts")
    target = PairSimilarity(pooling or "mean", similarity or "cosine")
    return explain(model, [query, passage], tokenizer=tokenizer, target=target, composite=composite, strict=strict)
