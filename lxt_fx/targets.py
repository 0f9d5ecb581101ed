"""What gets explained: the scalar per row that the backward pass is seeded from.

An ``int`` or ``str`` target always means exactly that logit, for every model family.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .tracing.errors import LXTError

TokenSpec = int | str | Sequence[int] | Sequence[int | str] | Tensor | None


class TargetError(LXTError, ValueError):
    """A target that does not name exactly one vocabulary entry per row."""


def check_token(token: Any, name: str = "target") -> None:
    """Refuse a token spec that is not ``None``, a str, an integer id (``int``, a NumPy integer, an integer
    tensor or array), or a sequence of those: a ``float``, ``bool`` or ``complex`` (Python, NumPy or a tensor
    of that dtype) would otherwise be cast to an id silently (``3.5`` → id 3, ``True`` → id 1).
    :class:`TargetError` names the value and what to give instead."""
    if token is None or isinstance(token, str):
        return
    if isinstance(token, numbers.Integral) and not isinstance(token, bool):
        return  # int and the NumPy integers (registered as Integral); bool is refused below
    dtype = getattr(token, "dtype", None)
    if isinstance(token, Tensor) or (dtype is not None and hasattr(token, "shape")):
        kind = str(dtype)
        if isinstance(token, Tensor):
            integer = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
        else:  # a NumPy array or scalar: signed or unsigned integer kinds only
            integer = getattr(dtype, "kind", "") in ("i", "u")
        if integer:
            return
        raise TargetError(f"{name}={token!r} holds {kind} values, not token ids: give integer ids (e.g. "
                          f"{name}=ids.long() after checking they are whole), a token as a str, or "
                          f"{name}=lxt_fx.targets.Function(fn) to explain another scalar")
    if isinstance(token, (list, tuple)):
        for item in token:
            check_token(item, name)
        return
    raise TargetError(f"{name}={token!r} is a {type(token).__name__}, not a token: give a token id (an int), "
                      f"a token as a str (e.g. ' Paris'), one of those per row, or a Target such as "
                      f"lxt_fx.targets.Function(fn)")


def token_ids(token: TokenSpec, logits: Tensor, tokenizer: Any) -> Tensor:
    """One target id per row: argmax for ``None``; an int, a single-token str, or one per row (ids, or a list
    of single-token strs and ids)."""
    batch, vocab = logits.shape
    if token is None:
        return logits.argmax(-1)
    if isinstance(token, str):
        ids = torch.full((batch,), single_token_id(token, tokenizer), dtype=torch.long)
    elif isinstance(token, int):
        ids = torch.full((batch,), token, dtype=torch.long)
    elif isinstance(token, (list, tuple)) and any(isinstance(t, str) for t in token):
        if len(token) != batch:
            raise TargetError(f"got {len(token)} targets {list(token)} for a batch of {batch}: give one per row "
                              "or one for every row")
        ids = torch.cat([token_ids(t, logits[i:i + 1], tokenizer) for i, t in enumerate(token)])
    else:
        ids = torch.as_tensor(token, dtype=torch.long).flatten()
        if ids.numel() != batch:
            raise TargetError(f"got {ids.numel()} target ids for a batch of {batch}: give one per row or one int")
    ids = ids.to(logits.device)
    if (ids < 0).any() or (ids >= vocab).any():
        raise TargetError(f"target id(s) {ids.tolist()} outside the {vocab} outputs of the model")
    return ids


def single_token_id(token: str, tokenizer: Any) -> int:
    """The id of ``token``, a str that ``tokenizer`` encodes as exactly one token of its vocabulary;
    :class:`TargetError` for several tokens, or for a word the vocabulary does not hold (encoded as the unknown
    token)."""
    if tokenizer is None:
        raise TargetError(f"target {token!r} is a string: pass tokenizer=... to explain, or give the id")
    pieces = tokenizer.encode(token, add_special_tokens=False)
    if len(pieces) != 1:
        names = tokenizer.convert_ids_to_tokens(pieces)
        raise TargetError(f"target {token!r} is {len(pieces)} tokens {names} (ids {pieces}), not one: "
                          "pick one of those pieces (e.g. the first) or pass its id")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and pieces[0] == unk and token.strip() != getattr(tokenizer, "unk_token", None):
        raise TargetError(f"target {token!r} is not in the vocabulary: the tokenizer encodes it as its unknown "
                          f"token {tokenizer.unk_token!r} (id {unk}), which would be explained instead; give a "
                          "word of the vocabulary (or its id)")
    return int(pieces[0])


class LabelNames:
    """A classifier's labels (``config.id2label``) in the place of a tokenizer: a str target names a label,
    by its name or as ``"LABEL_<i>"``; ids read back as label names."""

    def __init__(self, id2label: dict[Any, str]) -> None:
        self.id2label = {int(k): str(v) for k, v in id2label.items()}
        self.label2id = {v: k for k, v in self.id2label.items()}
        self.unk_token_id = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """``[class id]`` of a label name or ``"LABEL_<i>"``; :class:`TargetError` listing the labels otherwise
        (``add_special_tokens`` is accepted for the tokenizer interface and ignored)."""
        if text in self.label2id:
            return [self.label2id[text]]
        if text.startswith("LABEL_") and text[6:].isdigit() and int(text[6:]) in self.id2label:
            return [int(text[6:])]
        raise TargetError(f"target {text!r} is not a label of this classifier: its labels are "
                          f"{[self.id2label[i] for i in sorted(self.id2label)]} (or LABEL_0 … "
                          f"LABEL_{len(self.id2label) - 1}, or the class id as an int)")

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The label name of each class id (``"LABEL_<i>"`` for an id without a name)."""
        return [self.id2label.get(int(i), f"LABEL_{int(i)}") for i in ids]


def classifier_labels(config: Any, outputs: int) -> LabelNames | None:
    """The labels of a classifier with ``outputs`` classes (``config.id2label``, when it names every class)."""
    id2label = getattr(config, "id2label", None)
    if not isinstance(id2label, dict) or len(id2label) != outputs:
        return None
    return LabelNames(id2label)


class Target:
    """Base: ``ids`` picks one output index per row, ``score`` maps logits ``[batch, V]`` to ``[batch]``."""

    token: TokenSpec = None

    def ids(self, logits: Tensor, tokenizer: Any = None) -> Tensor:
        """The explained output index per row, ``[batch]``: ``token`` resolved against ``logits``
        (``None`` = the argmax; a str is encoded with ``tokenizer`` and must be one token)."""
        return token_ids(self.token, logits, tokenizer)

    def score(self, logits: Tensor, ids: Tensor, tokenizer: Any = None) -> Tensor:
        """The explained scalar per row, ``[batch]``, from the last position's ``logits`` ``[batch, V]`` and
        the rows' target ``ids``; backward from its sum starts the relevance."""
        raise NotImplementedError


class Logit(Target):
    """The raw logit of ``token`` (the default; ``None`` = the argmax)."""

    def __init__(self, token: TokenSpec = None) -> None:
        check_token(token)
        self.token = token

    def score(self, logits: Tensor, ids: Tensor, tokenizer: Any = None) -> Tensor:
        return logits.gather(-1, ids[:, None])[:, 0]


class LogProb(Target):
    """``log softmax(logits)[token]``: relevance of the probability, not the logit."""

    def __init__(self, token: TokenSpec = None) -> None:
        check_token(token)
        self.token = token

    def score(self, logits: Tensor, ids: Tensor, tokenizer: Any = None) -> Tensor:
        return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None])[:, 0]


class Contrastive(Target):
    """``logit[token] − logit[rival]``, or ``logit[token] − mean(logits)`` when ``rival`` is None."""

    def __init__(self, token: TokenSpec = None, rival: TokenSpec = None) -> None:
        check_token(token)
        check_token(rival, "rival")
        self.token, self.rival = token, rival

    def score(self, logits: Tensor, ids: Tensor, tokenizer: Any = None) -> Tensor:
        own = logits.gather(-1, ids[:, None])[:, 0]
        if self.rival is None:
            return own - logits.mean(-1)
        rival = token_ids(self.rival, logits, tokenizer)
        return own - logits.gather(-1, rival[:, None])[:, 0]


class Function(Target):
    """Any scalar per row computed from the model's outputs: ``fn(outputs: dict) -> Tensor[batch]``."""

    def __init__(self, fn: Callable[[dict[str, Tensor]], Tensor]) -> None:
        self.fn = fn

    def scores(self, outputs: dict[str, Tensor], mask: Tensor) -> Tensor:
        """The explained scalar per row from the model's ``outputs`` (``mask``: the rows' attention mask
        ``[batch, seq]``, for targets that pool over tokens; ``fn`` alone does not read it)."""
        return self.fn(outputs)


POOLINGS = ("mean", "cls", "last")
SIMILARITIES = ("cosine", "dot")


def pooled(hidden: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """One embedding per row from token states ``[batch, seq, H]``: ``"mean"`` over the real tokens (the mask's
    count is a constant of the explanation), ``"cls"`` the first real token, ``"last"`` the last real one."""
    m = mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "cls":
        return hidden[rows, mask.to(torch.long).argmax(1)]
    if pooling == "last":
        return hidden[rows, mask.shape[1] - 1 - mask.flip(1).to(torch.long).argmax(1)]
    raise TargetError(f"pooling={pooling!r}: give one of {POOLINGS}")


class PairSimilarity(Function):
    """A bi-encoder's similarity of a query and a passage, explained on both sides from one backward pass.

    The batch holds the queries then the passages (``[q_1 … q_n, p_1 … p_n]``, as ``explain(model, [query,
    passage])`` with ``n = 1``); each row is pooled (``pooling``: ``"mean"``, ``"cls"`` or ``"last"``) from
    ``outputs[key]`` into ``e``, and for ``similarity="cosine"`` divided by its norm held constant
    (``ê = e / ‖e‖``, the identity rule through the normalization, as for every norm under AttnLRP:
    without it, cosine is scale-invariant and its relevance would sum to 0). The similarity
    ``s_i = ê_{q_i} · ê_{p_i}`` is a product of two relevance-carrying tensors, so it gets AttnLRP's uniform
    rule (Achtibat et al., ICML 2024, Prop. 3.3): each side receives half,

        row q_i: ``½ · ê_{q_i} · stop(ê_{p_i})``,   row p_i: ``½ · stop(ê_{q_i}) · ê_{p_i}``,

    whose gradients are exactly the halved gradients of ``s_i`` in each factor. Each row's explained score is
    its half, the two rows of a pair add up to ``s_i``, and with zero biases so do the relevances of all the
    pair's tokens, over both sides."""

    def __init__(self, pooling: str = "mean", similarity: str = "cosine", key: str = "last_hidden_state") -> None:
        if pooling not in POOLINGS:
            raise TargetError(f"pooling={pooling!r}: give one of {POOLINGS}")
        if similarity not in SIMILARITIES:
            raise TargetError(f"similarity={similarity!r}: give one of {SIMILARITIES}")
        self.pooling, self.similarity, self.key = pooling, similarity, key
        super().__init__(self._need_mask)

    def _need_mask(self, outputs: dict[str, Tensor]) -> Tensor:
        raise TargetError("PairSimilarity pools over the rows' tokens and needs their mask: pass it to "
                          "lxt_fx.explain as target=, or call scores(outputs, mask)")

    def embeddings(self, outputs: dict[str, Tensor], mask: Tensor) -> Tensor:
        """The pooled embedding of every row, divided by its (constant) norm for cosine: ``[batch, H]``."""
        if self.key not in outputs:
            raise TargetError(f"PairSimilarity pools outputs[{self.key!r}], but the model returns {list(outputs)}: "
                              "explain the encoder itself (e.g. AutoModel, BertModel) or PairSimilarity(key=...)")
        e = pooled(outputs[self.key].float(), mask, self.pooling)
        return e / e.norm(dim=-1, keepdim=True).detach() if self.similarity == "cosine" else e

    def scores(self, outputs: dict[str, Tensor], mask: Tensor) -> Tensor:
        """Row ``q_i``: ``½ ê_q · stop(ê_p)``; row ``p_i``: ``½ stop(ê_q) · ê_p`` (see the class doc)."""
        batch = mask.shape[0]
        if batch % 2:
            raise TargetError(f"PairSimilarity pairs the first half of the rows (queries) with the second half "
                              f"(passages), but the batch has {batch} rows: give [query, passage] (or n queries "
                              "then their n passages)")
        e = self.embeddings(outputs, mask)
        q, p = e[: batch // 2], e[batch // 2:]
        return torch.cat([0.5 * (q * p.detach()).sum(-1), 0.5 * (q.detach() * p).sum(-1)])


class Similarity(Function):
    """Image–text similarity of a dual encoder (CLIP, SigLIP): row ``i`` explains
    ``outputs[key][i, i]``, the similarity of image ``i`` with text ``i`` (``key`` default
    ``"logits_per_image"``, i.e. ``scale · cos(image_i, text_i)`` (+ bias for SigLIP)). Give as many texts
    as images, paired by row."""

    def __init__(self, key: str = "logits_per_image") -> None:
        self.key = key
        super().__init__(self._diagonal)

    def _diagonal(self, outputs: dict[str, Tensor]) -> Tensor:
        if self.key not in outputs:
            raise TargetError(f"Similarity explains outputs[{self.key!r}], but the model returns {list(outputs)}: "
                              "use a dual encoder (CLIPModel, SiglipModel) or Similarity(key=...)")
        sims = outputs[self.key]
        if sims.dim() != 2 or sims.shape[0] != sims.shape[1]:
            raise TargetError(f"Similarity pairs image i with text i, but {self.key} has shape "
                              f"{tuple(sims.shape)}: give as many texts as images (repeat a text per image)")
        return sims.diagonal()


def as_target(target: Target | TokenSpec) -> Target:
    """``None``/int/str/ids → :class:`Logit`; a :class:`Target` as it is; anything else (a float, a bool, …)
    :class:`TargetError` (:func:`check_token`)."""
    return target if isinstance(target, Target) else Logit(target)


def natural_target(goal: Target, outputs: dict[str, Tensor]) -> Target:
    """The target that fits ``outputs`` when none was given (``goal`` is the default ``Logit(None)``): a
    dual encoder's (CLIP, SigLIP: ``logits_per_image`` and no ``logits``) one meaningful output, the
    image–text :class:`Similarity`; otherwise ``goal`` unchanged."""
    default = type(goal) is Logit and goal.token is None
    if default and "logits" not in outputs and "logits_per_image" in outputs:
        return Similarity()
    return goal
