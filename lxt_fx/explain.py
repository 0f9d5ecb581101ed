"""``explain``: one forward through the rewritten graph, one backward, relevance per input token."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from . import modalities
from .attribution import Attribution
from .composites.composite import Composite
from .composites.palrp import PLACE_PREFIXES
from .composites.registry import resolve_composite
from .render.common import named_tokens
from .rewrite import recording_places
from .rules.position import position_relevance
from .session import (
    InputError,
    UnsupportedCallError,
    check_model,
    embed,
    input_embeddings,
    mask_like,
    rewritten_graph,
    unsupported_argument,
)
from .targets import Function, Target, TokenSpec, as_target, classifier_labels, natural_target
from .tracing.errors import LXTError
from .tracing.modes import in_eval_mode
from .tracing.offload import execution_device, is_dispatched
from .tracing.spliced import graph_inputs, splices_images

_F = TypeVar("_F", bound=Callable[..., Any])


def _normal_tensors(value: Any) -> Any:
    """``value`` with every inference tensor in it (also inside lists, tuples and mappings) cloned into a
    normal tensor, which autograd can save for backward."""
    if isinstance(value, Tensor):
        return value.clone() if value.is_inference() else value
    if type(value) in (list, tuple):
        return type(value)(_normal_tensors(v) for v in value)
    if isinstance(value, Mapping):
        items = {k: _normal_tensors(v) for k, v in value.items()}
        try:
            return type(value)(items)
        except TypeError:
            return items
    return value


def outside_inference_mode(fn: _F) -> _F:
    """Run ``fn`` with ``torch.inference_mode`` off for the call when the caller has it on (relevance needs a
    backward pass, which inference mode rules out), with its inference-tensor arguments cloned into normal
    tensors; the caller's mode is as it was afterwards. Without inference mode, ``fn`` runs as it is."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode(False):
            return fn(*_normal_tensors(args), **_normal_tensors(kwargs))

    return wrapper  # type: ignore[return-value]


class NoParametersError(LXTError, ValueError):
    """The model has no parameters: nothing in it can be explained, and no device to run on is known."""


class InputTooLongError(LXTError, ValueError):
    """An input longer than the learned absolute position table of the model (GPT-2's ``n_positions``,
    BERT's ``max_position_embeddings``)."""


def position_limit(model: nn.Module) -> tuple[str, int] | None:
    """``(config field, limit)`` when ``model`` looks up learned absolute positions: its config has
    ``n_positions`` or ``max_position_embeddings`` and the model holds an embedding table of that many rows
    (up to 2 more: OPT's offset) besides its token embedding. None for rotary or relative positions."""
    config = getattr(model, "config", None)
    for field in ("n_positions", "max_position_embeddings"):
        limit = getattr(config, field, None)
        if isinstance(limit, int) and limit > 0:
            break
    else:
        return None
    try:
        tokens = input_embeddings(model)
    except LXTError:
        tokens = None
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module is not tokens and limit <= module.num_embeddings <= limit + 2:
            return field, limit
    return None


def check_length(model: nn.Module, length: int) -> None:
    """:class:`InputTooLongError` when ``length`` tokens exceed ``model``'s learned positions
    (:func:`position_limit`); checked before the capture."""
    found = position_limit(model)
    if found is not None and length > found[1]:
        field, limit = found
        raise InputTooLongError(f"the input is {length} tokens long, but {type(model).__name__} has learned "
                                f"positions for {limit} (config.{field} = {limit}): shorten it to at most "
                                f"{limit} tokens (e.g. tokenizer(text, truncation=True, max_length={limit}))")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (for a model with accelerate hooks, the device they execute
    on), or :class:`NoParametersError`."""
    param = next(model.parameters(), None)
    if param is None:
        raise NoParametersError(
            f"{type(model).__name__} has no parameters (model.parameters() is empty): LRP explains a model "
            "through its weights and reads relevance at its input embeddings; pass the model itself (e.g. "
            "AutoModelForCausalLM.from_pretrained(...)), not a wrapper function or an empty module")
    if param.is_meta or is_dispatched(model):
        return execution_device(model) or param.device
    return param.device


def encode_for(model: nn.Module, inputs: str | Sequence[str] | Tensor, tokenizer: Any,
               attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``encode`` against the vocabulary of ``model``'s input embedding."""
    return encode(inputs, tokenizer, attention_mask, vocab_size(model))


def vocab_size(model: nn.Module) -> int:
    """The number of token ids ``model``'s input embedding takes."""
    return getattr(input_embeddings(model), "num_embeddings", None) or model.config.vocab_size


def encode(inputs: str | Sequence[str] | Tensor, tokenizer: Any, attention_mask: Tensor | None,
           vocab_size: int) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``, right-padded, validated against the vocabulary. Text pairs carry
    ``token_type_ids`` that these two do not: they are refused here (:func:`encode_text` keeps them)."""
    ids, mask, extra = encode_text(inputs, tokenizer, attention_mask, vocab_size)
    if extra and (_is_pair(inputs) or (isinstance(inputs, list) and any(_is_pair(t) for t in inputs))):
        raise InputError(f"text pairs encode {sorted(extra)} besides the ids, which this function does not pass "
                         "to the model: explain them with lxt_fx.explain(model, (text, text_pair), tokenizer=...), "
                         "or pass the tokenizer's whole output as keyword arguments of the model call")
    return ids, mask


def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item)


def encode_text(inputs: str | Sequence[str] | Sequence[tuple[str, str]] | tuple[str, str] | Tensor, tokenizer: Any,
                attention_mask: Tensor | None, vocab_size: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``(input_ids, attention_mask, other inputs)``, right-padded, validated against the vocabulary.

    The tokenizer's convention: a str is one row, a tuple ``(text, text_pair)`` one pair-encoded row, a list a
    batch (of texts or of pairs). The other inputs are what the tokenizer returns besides ids and mask
    (``token_type_ids`` of a pair, padded with 0)."""
    if isinstance(inputs, str) or _is_pair(inputs):
        inputs = [inputs]
    extra: dict[str, Tensor] = {}
    if isinstance(inputs, tuple) and all(isinstance(t, str) for t in inputs):
        raise InputError(f"a tuple of {len(inputs)} texts: a tuple is one (text, text_pair) pair, as for the "
                         "tokenizer; pass a list of texts for a batch")
    if isinstance(inputs, Tensor):
        if inputs.is_floating_point():
            raise InputError("input_ids must be integer token ids, got a float tensor (pass token ids)")
        if inputs.dim() not in (1, 2):
            raise InputError(f"input_ids must be [batch, seq] (or one row [seq]), got shape "
                             f"{tuple(inputs.shape)}: give one row of token ids per text, e.g. "
                             f"ids.reshape(-1, ids.shape[-1]) if the extra dimensions are really rows")
        ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
        mask = mask_like(ids, attention_mask)
    elif isinstance(inputs, list) and inputs and (all(isinstance(t, str) for t in inputs)
                                                  or all(_is_pair(t) for t in inputs)):
        if tokenizer is None:
            raise InputError("text inputs need a tokenizer: explain(model, text, tokenizer=tokenizer)")
        if attention_mask is not None:
            raise InputError("attention_mask was given with text inputs, whose mask is built from the text: "
                             "drop attention_mask, or pass input_ids [batch, seq] together with their mask")
        empty = [i for i, t in enumerate(inputs) if not all(p.strip() for p in ((t,) if isinstance(t, str) else t))]
        if empty:
            raise InputError(f"input text {empty} is empty: give at least one token of text")
        encoded = [tokenizer(t) if isinstance(t, str) else tokenizer(*t) for t in inputs]
        rows = [e["input_ids"] for e in encoded]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        types = [e.get("token_type_ids") if hasattr(e, "get") else None for e in encoded]
        if all(t is not None and len(t) == len(r) for t, r in zip(types, rows, strict=True)):
            extra["token_type_ids"] = torch.tensor([t + [0] * (width - len(t)) for t in types], dtype=torch.long)
        if all(_is_pair(t) for t in inputs):
            extra["segment_ids"] = torch.tensor([_sequence_ids(e, len(r)) + [-1] * (width - len(r))
                                                 for e, r in zip(encoded, rows, strict=True)], dtype=torch.long)
    else:
        raise InputError(f"inputs must be a str, a (text, text_pair) tuple, a list of those or input_ids "
                         f"[batch, seq]; got {type(inputs).__name__}")
    if ids.numel() == 0 or (mask.sum(-1) == 0).any():
        raise InputError("an input row has no tokens: give at least one token per row")
    if (ids < 0).any() or (ids >= vocab_size).any():
        bad = ids[(ids < 0) | (ids >= vocab_size)].unique().tolist()
        raise InputError(f"token id(s) {bad} outside the vocabulary of {vocab_size}: was the input encoded with "
                         "this model's tokenizer?")
    return ids, mask.to(torch.long), extra


def _sequence_ids(encoding: Any, length: int) -> list[int]:
    """Which text of a pair each token comes from: 0, 1, or -1 for special tokens (the fast tokenizer's
    ``sequence_ids()``; without it, ``token_type_ids`` with the first and last tokens taken as special)."""
    seq = getattr(encoding, "sequence_ids", None)
    try:
        found = seq() if callable(seq) else None
    except (ValueError, TypeError):  # a slow tokenizer
        found = None
    if found is not None and len(found) == length:
        return [-1 if s is None else int(s) for s in found]
    types = encoding.get("token_type_ids") if hasattr(encoding, "get") else None
    if types is None or len(types) != length:
        raise InputError("cannot tell the two texts of the pair apart (the tokenizer gives neither sequence_ids "
                         "nor token_type_ids): use a fast tokenizer")
    return [-1 if k in (0, length - 1) else int(t) for k, t in enumerate(types)]


# The inputs explain builds itself from ``inputs``, ``attention_mask`` and ``decoder_inputs``.
_OWN_INPUTS = {"input_ids": "inputs", "inputs_embeds": "inputs (the ids; relevance is read at their embeddings)",
               "attention_mask": "attention_mask=", "decoder_inputs_embeds": "decoder_inputs=",
               "decoder_attention_mask": "decoder_inputs= (its mask is built from it)"}


def forward_inputs(model: nn.Module, given: dict[str, Any], batch: int, device: torch.device
                   ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensor inputs, other inputs)`` of the model call from the keyword arguments ``given`` to explain
    (``token_type_ids``, ``position_ids``, …): each must be an input ``model.forward`` takes, tensors have one
    row per input row."""
    if not given:
        return {}, {}
    own = sorted(k for k in given if k in _OWN_INPUTS)
    if own:
        raise InputError(f"{own} are built by explain itself: give them as {[_OWN_INPUTS[k] for k in own]}")
    params = inspect.signature(type(model).forward).parameters
    unknown = sorted(k for k in given if k not in params)
    if unknown:
        raise InputError(f"{unknown} are neither options of explain nor inputs of {type(model).__name__}.forward "
                         f"(which takes {[p for p in params if p != 'self']})")
    problem = unsupported_argument(model, given)
    if problem is not None:
        raise UnsupportedCallError(type(model).__name__, *problem)
    tensors: dict[str, Tensor] = {}
    static: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        if isinstance(value, Tensor):
            if value.dim() == 0 or value.shape[0] != batch:
                raise InputError(f"{name} has shape {tuple(value.shape)}; it needs one row per input row "
                                 f"({batch})")
            tensors[name] = value.to(device)
        else:
            static[name] = value
    return tensors, static


def last_positions(mask: Tensor) -> Tensor:
    """Index of the last real token of each row."""
    width = mask.shape[1]
    return width - 1 - mask.flip(1).to(torch.long).argmax(1)


@outside_inference_mode
@in_eval_mode
def explain(model: nn.Module, inputs: str | Sequence[str] | Tensor | None = None, *, tokenizer: Any = None,
            target: Target | TokenSpec = None, composite: Composite | str | None = None,
            attention_mask: Tensor | None = None, decoder_inputs: str | Sequence[str] | Tensor | None = None,
            strict: bool = False, checkpoint: str | None = None,
            capture: Sequence[str] | None = None, processor: Any = None, images: Any = None,
            audio: Any = None, position: int | Sequence[int] | Tensor | None = None,
            **model_inputs: Any) -> Attribution:
    """Explain one scalar per row of ``model``'s output with one backward pass through the rewritten graph.

    ``inputs``: a str, a tuple ``(text, text_pair)`` (one pair-encoded row, as the tokenizer takes it), a list
    of those (right-padded batch), ``input_ids`` ``[batch, seq]``, or for image models ``pixel_values``
    ``[batch, channels, H, W]`` (the same result as ``images=pixel_values``: pixel
    relevance in ``relevance`` and ``pixel_relevance``, per patch in ``image_relevance``, no tokens). Any other input of the model's forward (``token_type_ids``, ``position_ids``,
    ``decoder_input_ids``, …) is passed as a keyword argument and reaches the model as given; a pair's
    ``token_type_ids`` come from the tokenizer.
    ``position``: the sequence position whose output is explained (an int, or one per row); default the last
    real token, and for a masked LM the ``[MASK]`` token of each row.
    ``target``: ``None`` (argmax next token at the last real position of a causal LM, argmax class of a
    classifier, the image–text :class:`~lxt_fx.targets.Similarity` of a dual encoder such as CLIP), an int id
    (a float, bool or complex is a :class:`~lxt_fx.targets.TargetError`), a str that is one token, one of those per row (``["blue", "sat"]``, ids), or a
    :class:`~lxt_fx.targets.Target`
    (``LogProb``, ``Contrastive``, ``Function``). ``composite``: a :class:`~lxt_fx.composites.Composite` or the
    name of one (``"attnlrp"``, ``"cp_lrp"``, …); default the one registered for the model's type, else
    ``attnlrp``. A padded batch gives each row the relevance it gets alone.
    ``decoder_inputs`` (encoder-decoder models): the decoder's input text or ids; the token after its last
    position is explained. Default: the decoder start token alone, i.e. the first output token.
    ``checkpoint``: None, ``"layer"`` or ``"sqrt"`` — gradient checkpointing inside the graph (same
    relevance, less memory).
    Called inside ``torch.inference_mode()``, the call itself runs outside it (it needs a backward pass), with
    the same result; the caller's mode is unchanged.
    ``capture``: node names or module paths (``"model.layers.3"``, globs allowed; ``"<path>:input"`` for a
    module's input) whose latent relevance
    ``x ⊙ grad`` (per neuron, from the same backward pass) is kept in ``Attribution.latents``; read one with
    ``attribution.latent(name)`` (the activation: ``latent_value(name)``). With ``capture`` the graph runs unsegmented (``checkpoint`` is ignored).
    """
    model = check_model(model)
    composite = resolve_composite(composite, model)
    goal = as_target(target)
    device = model_device(model)
    if "decoder_input_ids" in model_inputs:  # the model's own name for decoder_inputs (ids)
        if decoder_inputs is not None:
            raise InputError("both decoder_inputs= and decoder_input_ids= were given: give the decoder's ids once")
        decoder_inputs = model_inputs.pop("decoder_input_ids")
    if images is not None and audio is None and inputs is None and not splices_images(model):
        # an image alone: the same explanation as explain(model, pixel_values), one shape of result
        pixels = modalities.pixels(images, processor)
        return _explain_image(model, pixels.to(device), goal, composite, strict, checkpoint, capture)
    if images is not None or audio is not None:
        if capture:
            raise InputError("capture=... is not supported with images= / audio= yet: drop capture")
        return explain_mixed(model, inputs, tokenizer=tokenizer, processor=processor, images=images, audio=audio,
                             goal=goal, composite=composite, attention_mask=attention_mask, strict=strict,
                             checkpoint=checkpoint, decoder_inputs=decoder_inputs, position=position,
                             model_inputs=model_inputs)
    if inputs is None:
        raise InputError("nothing to explain: pass inputs (text or ids), images=... or audio=...")
    if tokenizer is None and processor is not None:
        tokenizer = getattr(processor, "tokenizer", processor)
    if isinstance(inputs, Tensor) and inputs.is_floating_point() and inputs.dim() == 4:
        return _explain_image(model, inputs.to(device), goal, composite, strict, checkpoint, capture)
    embedding = input_embeddings(model)
    vocab = vocab_size(model)
    ids, mask, made = encode_text(inputs, tokenizer, attention_mask, vocab)
    segment_ids = made.pop("segment_ids", None)
    ids, mask = ids.to(device), mask.to(device)
    takes = inspect.signature(type(model).forward).parameters
    given, static = forward_inputs(model, {**{k: v for k, v in made.items() if k in takes}, **model_inputs},
                                   ids.shape[0], device)
    config = getattr(model, "config", None)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    if not seq2seq:
        check_length(model, ids.shape[1])
    if decoder_inputs is not None and not seq2seq:
        raise InputError(f"{type(model).__name__} is not an encoder-decoder model: drop decoder_inputs")

    with torch.enable_grad():
        embeds = embed(embedding, ids, model).detach().requires_grad_(True)
        tensors = {"inputs_embeds": embeds, "attention_mask": mask, **given}
        explained_mask = mask
        dec_ids = dec_embeds = None
        if seq2seq:
            dec_ids, dec_mask = _decoder_ids(model, decoder_inputs, tokenizer, ids.shape[0], vocab)
            dec_ids, explained_mask = dec_ids.to(device), dec_mask.to(device)
            dec_embeds = _decoder_embedding(model)(dec_ids).detach().requires_grad_(True)
            tensors.update(decoder_inputs_embeds=dec_embeds, decoder_attention_mask=explained_mask)
        graph = rewritten_graph(model, composite, tensors, static, strict)
        _positions_supported(graph, checkpoint)
        with recording_places() as seen:
            outputs, latent = _run(graph, tensors, checkpoint, capture)
        tables = position_tables(seen)
        scores, target_ids, positions = target_scores(model, outputs, goal, explained_mask, tokenizer,
                                                      ids=ids if dec_ids is None else dec_ids, position=position)
        leaves = [embeds] if dec_embeds is None else [embeds, dec_embeds]
        grads = torch.autograd.grad(scores.sum(), leaves + [t for _, t in tables], allow_unused=True)
        maps = position_maps(tables, grads[len(leaves):], ids.shape[0])
    relevance = token_relevance(embeds, grads[0], mask)
    tokens = [token_strings(row[m.bool()], tokenizer) for row, m in zip(ids, mask, strict=True)]
    target_tokens = explained_names(model, outputs, target_ids, tokenizer)
    att = Attribution(relevance.cpu(), tokens, ids.cpu(), mask.cpu(), target_ids.cpu(),
                      scores.detach().float().cpu(), positions.cpu(), graph.report, target_tokens,
                      latents=None if latent is None else {k: v.cpu() for k, v in latent.relevance().items()},
                      latent_values=None if latent is None else {k: v.cpu() for k, v in latent.values().items()})
    att.segment_ids = segment_ids
    if isinstance(inputs, str) or _is_pair(inputs):
        att.texts = [inputs]
    elif isinstance(inputs, list) and all(isinstance(t, str) or _is_pair(t) for t in inputs):
        att.texts = list(inputs)
    _attach_positions(att, maps, mask, decoder=False)
    if dec_ids is not None:
        att.decoder_relevance = token_relevance(dec_embeds, grads[1], explained_mask).cpu()
        att.decoder_input_ids = dec_ids.cpu()
        att.decoder_tokens = [token_strings(row[m.bool()], tokenizer)
                              for row, m in zip(dec_ids, explained_mask, strict=True)]
    return att


def tokenizer_of(tokenizer: Any, processor: Any, mixed: bool) -> Any:
    """The tokenizer text is encoded with: ``tokenizer``, else ``processor.tokenizer``, else (text alone) the
    processor itself."""
    if tokenizer is not None or processor is None:
        return tokenizer
    return getattr(processor, "tokenizer", None if mixed else processor)


def model_call(model: nn.Module, inputs: str | Sequence[str] | Tensor | None = None, *, tokenizer: Any = None,
               processor: Any = None, images: Any = None, audio: Any = None, attention_mask: Tensor | None = None,
               decoder_inputs: str | Sequence[str] | Tensor | None = None) -> dict[str, Any]:
    """:func:`explain`'s inputs as the keyword arguments of one model call, parsed and validated as ``explain``
    does (the same encoders, shape and length checks, named errors): text → ``input_ids`` and
    ``attention_mask``; a float ``[batch, C, H, W]`` tensor or ``images=`` → ``pixel_values``; ``audio=`` →
    ``input_features`` / ``input_values``; an encoder-decoder's decoder text → ``decoder_inputs_embeds`` and
    ``decoder_attention_mask`` (default: its start token). ``check`` and the feature functions take their
    inputs through this, so every entry point reads inputs the way ``explain`` does."""
    model = check_model(model)
    tokenizer = tokenizer_of(tokenizer, processor, images is not None or audio is not None)
    config = getattr(model, "config", None)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    call: dict[str, Any] = {}
    if images is None and isinstance(inputs, Tensor) and inputs.is_floating_point() and inputs.dim() == 4:
        images, inputs = inputs, None  # explain(vit, pixels): the positional pixel values
    if images is not None:
        if splices_images(model):
            pixel_values, grid = modalities.spliced_pixels(model, images, processor)
            call["pixel_values"] = pixel_values
            if grid is not None:
                call["image_grid_thw"] = grid
        else:
            call["pixel_values"] = modalities.pixels(images, processor)
    if audio is not None:
        key, features = modalities.audio_input(model, audio, processor)
        call[key] = features
    if not call and inputs is None:
        raise InputError("nothing to explain: pass inputs (text or ids), images=... or audio=...")
    batch = next((v.shape[0] for v in call.values() if isinstance(v, Tensor)), None)
    if seq2seq and call:  # speech-to-text: the text is the decoder's
        if inputs is not None and decoder_inputs is not None:
            raise InputError(f"{type(model).__name__} reads its text in the decoder: give it once, as inputs or "
                             "as decoder_inputs, not both")
        decoder_inputs, inputs = inputs if decoder_inputs is None else decoder_inputs, None
    if inputs is not None:
        embedding = input_embeddings(model) if not call or modalities.names(model, "inputs_embeds") else None
        ids, mask = encode(inputs, tokenizer, attention_mask, modalities.vocab_size(model, embedding))
        if not seq2seq and not call:
            check_length(model, ids.shape[1])
        call.update(input_ids=ids, attention_mask=mask)
        batch = ids.shape[0] if batch is None else batch
    if seq2seq:
        embedding = _decoder_embedding(model)
        vocab = getattr(embedding, "num_embeddings", None) or config.vocab_size
        dec_ids, dec_mask = _decoder_ids(model, decoder_inputs, tokenizer, batch, vocab)
        with torch.no_grad():
            call["decoder_inputs_embeds"] = embedding(dec_ids.to(model_device(model)))
        call["decoder_attention_mask"] = dec_mask
    elif decoder_inputs is not None:
        raise InputError(f"{type(model).__name__} is not an encoder-decoder model: drop decoder_inputs")
    if "pixel_values" in call and "input_ids" not in call and splices_images(model):
        raise InputError(f"{type(model).__name__} splices image features into its text: pass the text (with its "
                         "image tokens) as inputs, e.g. the processor's input_ids")
    modalities.check_batches({k: v for k, v in call.items() if isinstance(v, Tensor) and k != "image_grid_thw"
                              and not (k == "pixel_values" and "image_grid_thw" in call)}, None)
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    return {k: (v.to(device, dtype) if k == "pixel_values" or k in ("input_features", "input_values")
                else v.to(device)) if isinstance(v, Tensor) and k != "image_grid_thw" else v
            for k, v in call.items()}


def explained_names(model: nn.Module, outputs: dict[str, Tensor], target_ids: Tensor, tokenizer: Any
                    ) -> list[str] | None:
    """What each row explains, as text: a classifier's label names (``config.id2label``), else the target
    tokens (None without a tokenizer, or for function targets)."""
    if (target_ids < 0).any():
        return None
    logits = outputs.get("logits")
    labels = None if logits is None or logits.dim() != 2 else classifier_labels(getattr(model, "config", None),
                                                                                  logits.shape[-1])
    names = labels if labels is not None else tokenizer
    if names is None:
        return None
    ids = target_ids.tolist()
    return named_tokens(names.convert_ids_to_tokens(ids), ids)


def _run(graph: Any, tensors: dict[str, Tensor], checkpoint: str | None, capture: Sequence[str] | None
         ) -> tuple[dict[str, Tensor], Any]:
    """Run the rewritten graph, through the latent-relevance pass when ``capture`` names nodes."""
    if not capture:
        return graph(tensors, checkpoint), None
    from .taps import latent_pass

    latent = latent_pass(graph, capture)
    return latent(tensors), latent


def target_scores(model: nn.Module, outputs: dict[str, Tensor], goal: Target, mask: Tensor, tokenizer: Any,
                  ids: Tensor | None = None, position: int | Sequence[int] | Tensor | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(explained scalar per row, target id per row, explained position per row). ``position``: see
    :func:`explained_positions` (``ids``: the rows' token ids, to find a masked LM's ``[MASK]``). A
    classifier's str target names one of its labels (``config.id2label``)."""
    batch = mask.shape[0]
    positions = torch.full((batch,), -1, dtype=torch.long, device=mask.device)
    goal = natural_target(goal, outputs)  # no target given: a dual encoder explains its image–text similarity
    if isinstance(goal, Function):
        scores = goal.scores(outputs, mask)
        if scores.shape != (batch,):
            raise InputError(f"the target function returned shape {tuple(scores.shape)}; it must return one "
                             f"scalar per row, shape ({batch},)")
        return scores, torch.full_like(positions, -1), positions
    logits = outputs.get("logits")
    if logits is None:
        raise InputError(f"{type(model).__name__} returns no logits ({list(outputs)}): explain a "
                         "function of its outputs with target=lxt_fx.targets.Function(fn)")
    if logits.dim() == 3:
        positions = explained_positions(model, mask, ids, tokenizer, position)
        logits = logits[torch.arange(batch, device=mask.device), positions]
    else:
        if position is not None:
            raise InputError(f"{type(model).__name__} gives one output per row, not one per position: drop "
                             "position=")
        tokenizer = classifier_labels(getattr(model, "config", None), logits.shape[-1]) or tokenizer
    target_ids = goal.ids(logits.detach(), tokenizer)
    return goal.score(logits, target_ids, tokenizer), target_ids, positions


def masked_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a masked language model (``*ForMaskedLM``): it predicts the token at a mask."""
    return type(model).__name__.endswith("ForMaskedLM")


def explained_positions(model: nn.Module, mask: Tensor, ids: Tensor | None, tokenizer: Any,
                        position: int | Sequence[int] | Tensor | None) -> Tensor:
    """The sequence position explained in each row: ``position`` (an int for every row, or one per row) when
    given, else the ``[MASK]`` token of each row for a masked LM, else the last real token."""
    batch, width = mask.shape
    if position is not None:
        if isinstance(position, (bool, str)) or not isinstance(position, (int, Sequence, Tensor)):
            raise InputError(f"position={position!r}: give an int or one int per row")
        pos = torch.as_tensor(position, dtype=torch.long).flatten().to(mask.device)
        if pos.numel() == 1:
            pos = pos.expand(batch)
        if pos.numel() != batch:
            raise InputError(f"position= gives {pos.numel()} positions for {batch} rows: give one int, or one per row")
        bad = [(r, int(p)) for r, p in enumerate(pos.tolist()) if not 0 <= p < width or not mask[r, p]]
        if bad:
            raise InputError(f"position(s) (row, position) {bad} are not tokens of their rows (each row has "
                             f"positions 0..{width - 1}, padding left out): give the index of a real token")
        return pos
    if not masked_lm(model):
        return last_positions(mask)
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None or ids is None:
        raise InputError(f"{type(model).__name__} predicts the token at a mask: pass tokenizer=... (to find its "
                         "mask token) or position=... (the index to explain)")
    found = (ids == mask_id) & mask.bool()
    counts = found.sum(-1).tolist()
    wrong = [r for r, c in enumerate(counts) if c != 1]
    if wrong:
        raise InputError(f"{type(model).__name__} predicts the token at a mask, but row(s) {wrong} hold "
                         f"{[counts[r] for r in wrong]} {tokenizer.mask_token} tokens: put exactly one "
                         f"{tokenizer.mask_token} in each row, or say which index to explain with position=...")
    return found.to(torch.long).argmax(-1)


def _positions_supported(graph: Any, checkpoint: str | None) -> None:
    if checkpoint is not None and any(k.startswith(PLACE_PREFIXES) for k in graph.plan.places.values()):
        raise InputError("a position-aware composite (palrp) reads its positional tables inside the graph, "
                         "which checkpoint=... does not support yet: drop checkpoint")


def position_tables(seen: dict[str, list[Tensor]]) -> list[tuple[str, Tensor]]:
    """``(key, table)`` for every positional table a rewritten graph recorded (PA-LRP places)."""
    return [(k, t) for k, values in seen.items() if k.startswith(PLACE_PREFIXES) for t in values]


def position_maps(tables: Sequence[tuple[str, Tensor]], grads: Sequence[Tensor | None], batch: int | None = None
                  ) -> dict[str, Tensor]:
    """``{key: [batch, positions]}``: each table's relevance per row and position (PA-LRP Eq. 11), summed
    over the places of one table (layers, queries and keys of a rotary table), on the CPU. A table without one
    entry per row (``batch``; default the largest first axis) is left out: Qwen2-VL's vision tower rotates
    its patches flattened over all images."""
    out: dict[str, Tensor] = {}
    rows = max((t.shape[0] for _, t in tables), default=0) if batch is None else batch
    for (key, table), grad in zip(tables, grads, strict=True):
        if table.shape[0] != rows:  # not one entry per row (a vision tower's patches flattened over images)
            continue
        r = position_relevance(table, grad).detach().cpu()
        out[key] = r if key not in out else out[key] + r
    return out


_NOT_TEXT = ("vision", "visual", "image", "patch")


def _attach_positions(att: Attribution, maps: dict[str, Tensor], mask: Tensor, decoder: bool) -> None:
    """Fill ``position_maps`` and ``position_relevance``: the sum of the ``positions:`` tables over the text's
    own positions (as wide as its tokens; an encoder-decoder's text is its decoder's when ``decoder``)."""
    if not maps:
        return
    att.position_maps = maps
    width = mask.shape[1]
    text = [m for k, m in maps.items() if k.startswith("positions:") and m.shape[1] == width
            and ("decoder" in k) == decoder and not any(w in k.lower() for w in _NOT_TEXT)]
    if text:
        att.position_relevance = sum(text) * mask.float().cpu()


def token_relevance(embeds: Tensor, grad: Tensor | None, mask: Tensor) -> Tensor:
    """Relevance per token: ``(embedding ⊙ gradient)`` summed over the hidden dim, 0 on padding."""
    if grad is None:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return (embeds.detach().float() * grad.float()).sum(-1) * mask.float()


def _decoder_embedding(model: nn.Module) -> nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    emb = decoder.get_input_embeddings() if decoder is not None and hasattr(decoder, "get_input_embeddings") \
        else None
    return emb if isinstance(emb, nn.Module) else input_embeddings(model)


def _decoder_ids(model: nn.Module, decoder_inputs: Any, tokenizer: Any, batch: int, vocab: int
                 ) -> tuple[Tensor, Tensor]:
    """Decoder input ids and mask: the given text/ids, or the decoder start token alone (the default)."""
    start = getattr(model.config, "decoder_start_token_id", None)
    if decoder_inputs is None:
        if start is None:
            raise InputError(f"{type(model).__name__} has no config.decoder_start_token_id: pass "
                             "decoder_inputs=... (text or ids) to say which decoder position to explain")
        ids = torch.full((batch, 1), start, dtype=torch.long)
        return ids, torch.ones_like(ids)
    if isinstance(decoder_inputs, (str, list, tuple)) and start is not None:
        texts = [decoder_inputs] * batch if isinstance(decoder_inputs, str) else list(decoder_inputs)
        ids, mask = encode(texts, _NoSpecialTokens(tokenizer) if tokenizer is not None else None, None, vocab)
        ids = torch.cat([torch.full((ids.shape[0], 1), start, dtype=torch.long), ids], 1)
        return ids, torch.cat([torch.ones_like(ids[:, :1]), mask], 1)
    ids, mask = encode(decoder_inputs, tokenizer, None, vocab)
    if ids.shape[0] == 1 and batch > 1:
        ids, mask = ids.expand(batch, -1), mask.expand(batch, -1)
    return ids, mask


class _NoSpecialTokens:
    """A tokenizer view that encodes decoder text without special tokens (the start token is added)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.tokenizer(text, add_special_tokens=False)["input_ids"]}


def _explain_image(model: nn.Module, pixels: Tensor, goal: Target, composite: Composite, strict: bool,
                   checkpoint: str | None, capture: Sequence[str] | None) -> Attribution:
    """Pixel relevance ``[batch, H, W]`` (summed over channels) for an image model: in ``relevance`` and
    ``pixel_relevance`` (the same tensor), and summed per patch in ``image_relevance``."""
    size = getattr(getattr(model, "config", None), "image_size", None)
    if size is not None:
        want = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(pixels.shape[-2:]) != want:
            raise InputError(f"image of size {tuple(pixels.shape[-2:])}, but {type(model).__name__} expects "
                             f"{want}: resize it (e.g. with the model's image processor)")
    batch = pixels.shape[0]
    with torch.enable_grad():
        leaf = pixels.detach().requires_grad_(True)
        tensors = {"pixel_values": leaf}
        graph = rewritten_graph(model, composite, tensors, {}, strict)
        _positions_supported(graph, checkpoint)
        with recording_places() as seen:
            outputs, latent = _run(graph, tensors, checkpoint, capture)
        tables = position_tables(seen)
        mask = torch.ones(batch, 1, dtype=torch.long, device=pixels.device)
        scores, target_ids, positions = target_scores(model, outputs, goal, mask, None)
        grad, *table_grads = torch.autograd.grad(scores.sum(), [leaf] + [t for _, t in tables], allow_unused=True)
        maps = position_maps(tables, table_grads, batch)
    relevance = (leaf.detach().float() * grad.float()).sum(1).cpu()
    patch = modalities.patch_size(model)
    patch = patch if relevance.shape[-2] % patch == 0 and relevance.shape[-1] % patch == 0 else 1
    return Attribution(relevance, [[] for _ in range(batch)], torch.zeros(batch, 0, dtype=torch.long),
                       torch.zeros(batch, 0, dtype=torch.long), target_ids.cpu(), scores.detach().float().cpu(),
                       positions.cpu(), graph.report,
                       latents=None if latent is None else {k: v.cpu() for k, v in latent.relevance().items()},
                       latent_values=None if latent is None else {k: v.cpu() for k, v in latent.values().items()},
                       image_relevance=modalities.patch_grid(relevance, patch), pixel_relevance=relevance,
                       position_maps=maps or None)


def explain_mixed(model: nn.Module, inputs: str | Sequence[str] | Tensor | None, *, tokenizer: Any,
                  processor: Any, images: Any, audio: Any, goal: Target, composite: Composite,
                  attention_mask: Tensor | None, strict: bool, checkpoint: str | None = None,
                  decoder_inputs: str | Sequence[str] | Tensor | None = None,
                  position: int | Sequence[int] | Tensor | None = None,
                  model_inputs: dict[str, Any] | None = None) -> Attribution:
    """Explain one scalar per row from text with ``images`` (pixel_values) and/or ``audio``
    (input_features / input_values) in one backward pass; see :func:`lxt_fx.explain`. A speech-to-text model's
    text is its decoder's: ``decoder_inputs`` (or ``inputs``; default its start token alone)."""
    tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
    device = model_device(model)
    config = getattr(model, "config", None)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    tensors: dict[str, Tensor] = {}
    spliced = images is not None and splices_images(model)  # LLaVA, Qwen2-VL: image features in the text
    grid = None
    if spliced:
        pixel_values, grid = modalities.spliced_pixels(model, images, processor)
        tensors["pixel_values"] = pixel_values.to(device, next(model.parameters()).dtype)
    elif images is not None:
        tensors["pixel_values"] = modalities.pixels(images, processor).to(device, next(model.parameters()).dtype)
    audio_key = None
    if audio is not None:
        audio_key, features = modalities.audio_input(model, audio, processor)
        tensors[audio_key] = features.to(device, next(model.parameters()).dtype)
    text_key = mask_key = None
    ids = mask = None
    if decoder_inputs is not None and not seq2seq:
        raise InputError(f"{type(model).__name__} is not an encoder-decoder model: drop decoder_inputs")
    if seq2seq:  # speech-to-text: the text is the decoder's (default: its start token alone)
        if inputs is not None and decoder_inputs is not None:
            raise InputError(f"{type(model).__name__}'s text is its decoder's: give it once, as decoder_inputs= "
                             "(or as inputs), not both")
        vocab = getattr(_decoder_embedding(model), "num_embeddings", None) or config.vocab_size
        batch = next(iter(tensors.values())).shape[0]
        ids, mask = _decoder_ids(model, decoder_inputs if decoder_inputs is not None else inputs, tokenizer, batch,
                                 vocab)
        text_key, mask_key, embedding = "decoder_inputs_embeds", "decoder_attention_mask", _decoder_embedding(model)
    elif inputs is not None:
        text_key = "inputs_embeds" if modalities.names(model, "inputs_embeds") else None
        embedding = input_embeddings(model) if text_key is not None else None
        ids, mask = encode(inputs, tokenizer, attention_mask, modalities.vocab_size(model, embedding))
        mask_key = "attention_mask" if modalities.names(model, "attention_mask") else None
        if text_key is None:
            tensors["input_ids"] = ids.to(device)  # a dual encoder's text tower reads the ids themselves
    if mask_key is not None:
        tensors[mask_key] = mask.to(device)
    batch_of = ids.shape[0] if ids is not None else next(iter(tensors.values())).shape[0]
    given, given_static = forward_inputs(model, dict(model_inputs or {}), batch_of, device)
    tensors.update(given)
    if spliced and text_key is None:
        raise InputError(f"{type(model).__name__} splices image features into its text: pass the text (with its "
                         "image tokens) as inputs, e.g. the processor's input_ids")
    modalities.check_batches({k: v for k, v in tensors.items() if grid is None or k != "pixel_values"}
                             | ({} if grid is None else {"image_grid_thw": grid}), ids)
    with torch.enable_grad():
        leaves = {k: v.detach().requires_grad_(True) for k, v in tensors.items() if k in ("pixel_values", audio_key)}
        if text_key is not None:
            leaves[text_key] = embedding(ids.to(device)).detach().requires_grad_(True)
        call: dict[str, Any] = {**tensors, **leaves}
        static: dict[str, Any] = dict(given_static)
        if spliced:  # M-RoPE positions from the ids, the image grid as a constant (see tracing.spliced)
            call, static = graph_inputs(model, ids.to(device), call | ({} if grid is None else {"image_grid_thw": grid}),
                                        static)
        graph = rewritten_graph(model, composite, call, static, strict)
        places = graph.plan.places
        if places and checkpoint is not None:
            raise InputError(f"{type(model).__name__} reads its token ids itself, so its token relevance is read "
                             "inside the graph, which checkpoint=... does not support yet: drop checkpoint")
        _positions_supported(graph, checkpoint)
        with recording_places() as seen:
            outputs, _ = _run(graph, call, checkpoint, None)
        place_values = seen.get("inputs_embeds", []) if places else []
        tables = position_tables(seen)
        explained = mask.to(device) if mask is not None else torch.ones(
            next(iter(leaves.values())).shape[0], 1, dtype=torch.long, device=device)
        scores, target_ids, positions = target_scores(model, outputs, goal, explained, tokenizer,
                                                      ids=None if ids is None else ids.to(device), position=position)
        names = list(leaves)
        got = torch.autograd.grad(scores.sum(), [leaves[n] for n in names] + place_values + [t for _, t in tables],
                                  allow_unused=True)
        grads = dict(zip(names, got[:len(names)], strict=True))
        maps = position_maps(tables, got[len(names) + len(place_values):], scores.shape[0])
        got = got[:len(names) + len(place_values)]
    batch = scores.shape[0]
    if text_key is not None:
        relevance = token_relevance(leaves[text_key], grads[text_key], mask.to(device)).cpu()
    elif place_values:  # a dual encoder: the token embeddings its graph looks up (summed over lookups)
        relevance = sum(token_relevance(value, grad, mask.to(device))
                        for value, grad in zip(place_values, got[len(names):], strict=True)).cpu()
    else:
        relevance = torch.zeros(batch, 0 if ids is None else ids.shape[1])
    tokens = [[] for _ in range(batch)] if ids is None else \
        [token_strings(row[m.bool()], tokenizer) for row, m in zip(ids, mask, strict=True)]
    target_tokens = explained_names(model, outputs, target_ids, tokenizer)
    att = Attribution(relevance, tokens, torch.zeros(batch, 0, dtype=torch.long) if ids is None else ids.cpu(),
                      torch.zeros(batch, 0, dtype=torch.long) if mask is None else mask.cpu(), target_ids.cpu(),
                      scores.detach().float().cpu(), positions.cpu(), graph.report, target_tokens)
    if mask is not None:
        _attach_positions(att, maps, mask.to(device), decoder=seq2seq)
    else:
        att.position_maps = maps or None
    if text_key is None and not place_values and ids is not None:  # no relevance was read at the text: say so
        att.attention_mask = torch.zeros_like(att.attention_mask)
        att.tokens = [[] for _ in range(batch)]
    if "pixel_values" in leaves and grid is not None:  # Qwen2-VL's flattened patches, back on each image
        patch, merge, temporal, channels = modalities.merged_patches(model)
        rel = modalities.input_relevance(leaves["pixel_values"], grads["pixel_values"])
        pixel_map, cells = modalities.unflatten_patches(rel, grid, patch, merge, temporal, channels)
        att.pixel_relevance, att.image_relevance = pixel_map.cpu(), cells.cpu()
    elif "pixel_values" in leaves:
        pixels = modalities.input_relevance(leaves["pixel_values"], grads["pixel_values"]).sum(1)
        att.pixel_relevance = pixels.cpu()
        att.image_relevance = modalities.patch_grid(pixels, modalities.patch_size(model)).cpu()
    if audio_key is not None:
        rel = modalities.input_relevance(leaves[audio_key], grads[audio_key])
        att.audio_relevance = (rel.sum(1) if rel.dim() == 3 else rel).cpu()
    return att


def token_strings(ids: Tensor, tokenizer: Any) -> list[str]:
    """The tokens of one row of ids as the tokenizer spells them (the ids as text without a tokenizer; an id the
    tokenizer does not know as ``⟨id 41⟩``)."""
    if tokenizer is None:
        return [str(i) for i in ids.tolist()]
    return named_tokens(tokenizer.convert_ids_to_tokens(ids.tolist()), ids.tolist())
