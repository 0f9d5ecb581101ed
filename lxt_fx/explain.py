"""``explain``: one forward through the rewritten graph, one backward, relevance per input token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import modalities
from .attribution import Attribution
from .composites.composite import Composite
from .composites.registry import for_model
from .rewrite import recording_places
from .session import InputError, check_model, embed, input_embeddings, mask_like, rewritten_graph
from .targets import Function, Target, TokenSpec, as_target
from .tracing.errors import LXTError
from .tracing.modes import in_eval_mode
from .tracing.offload import execution_device, is_dispatched
from .tracing.spliced import graph_inputs, splices_images


class NoParametersError(LXTError, ValueError):
    """The model has no parameters: nothing in it can be explained, and no device to run on is known."""


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
    """``(input_ids, attention_mask)``, right-padded, validated against the vocabulary."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, Tensor):
        if inputs.is_floating_point():
            raise InputError("input_ids must be integer token ids, got a float tensor (pass token ids)")
        if inputs.dim() not in (1, 2):
            raise InputError(f"input_ids must be [batch, seq] (or one row [seq]), got shape "
                             f"{tuple(inputs.shape)}: give one row of token ids per text, e.g. "
                             f"ids.reshape(-1, ids.shape[-1]) if the extra dimensions are really rows")
        ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
        mask = mask_like(ids, attention_mask)
    elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        if tokenizer is None:
            raise InputError("text inputs need a tokenizer: explain(model, text, tokenizer=tokenizer)")
        if attention_mask is not None:
            raise InputError("attention_mask was given with text inputs, whose mask is built from the text: "
                             "drop attention_mask, or pass input_ids [batch, seq] together with their mask")
        empty = [i for i, t in enumerate(inputs) if not t.strip()]
        if empty:
            raise InputError(f"input text {empty} is empty: give at least one token of text")
        rows = [tokenizer(t)["input_ids"] for t in inputs]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    else:
        raise InputError(f"inputs must be a str, a list of str or input_ids [batch, seq]; got {type(inputs).__name__}")
    if ids.numel() == 0 or (mask.sum(-1) == 0).any():
        raise InputError("an input row has no tokens: give at least one token per row")
    if (ids < 0).any() or (ids >= vocab_size).any():
        bad = ids[(ids < 0) | (ids >= vocab_size)].unique().tolist()
        raise InputError(f"token id(s) {bad} outside the vocabulary of {vocab_size}: was the input encoded with "
                         "this model's tokenizer?")
    return ids, mask.to(torch.long)


def last_positions(mask: Tensor) -> Tensor:
    """Index of the last real token of each row."""
    width = mask.shape[1]
    return width - 1 - mask.flip(1).to(torch.long).argmax(1)


@in_eval_mode
def explain(model: nn.Module, inputs: str | Sequence[str] | Tensor | None = None, *, tokenizer: Any = None,
            target: Target | TokenSpec = None, composite: Composite | None = None,
            attention_mask: Tensor | None = None, decoder_inputs: str | Sequence[str] | Tensor | None = None,
            strict: bool = False, checkpoint: str | None = None,
            capture: Sequence[str] | None = None, processor: Any = None, images: Any = None,
            audio: Any = None) -> Attribution:
    """Explain one scalar per row of ``model``'s output with one backward pass through the rewritten graph.

    ``inputs``: a str, a list of str (right-padded batch), ``input_ids`` ``[batch, seq]``, or for image
    models ``pixel_values`` ``[batch, channels, H, W]``.
    ``target``: ``None`` (argmax next token at the last real position of a causal LM, argmax class of a
    classifier), an int id or one per row, a str that is one token, or a :class:`~lxt_fx.targets.Target`
    (``LogProb``, ``Contrastive``, ``Function``). ``composite``: default the one registered for the model's
    type, else ``attnlrp``. A padded batch gives each row the relevance it gets alone.
    ``decoder_inputs`` (encoder-decoder models): the decoder's input text or ids; the token after its last
    position is explained. Default: the decoder start token alone, i.e. the first output token.
    ``checkpoint``: None, ``"layer"`` or ``"sqrt"`` — gradient checkpointing inside the graph (same
    relevance, less memory).
    ``capture``: node names or module paths (``"model.layers.3"``, globs allowed; ``"<path>:input"`` for a
    module's input) whose latent relevance
    ``x ⊙ grad`` (per neuron, from the same backward pass) is kept in ``Attribution.latents``; read one with
    ``attribution.latent(name)`` (the activation: ``latent_value(name)``). With ``capture`` the graph runs unsegmented (``checkpoint`` is ignored).
    """
    model = check_model(model)
    composite = composite if composite is not None else for_model(model)
    goal = as_target(target)
    device = model_device(model)
    if images is not None or audio is not None:
        if capture:
            raise InputError("capture=... is not supported with images= / audio= yet: drop capture")
        return explain_mixed(model, inputs, tokenizer=tokenizer, processor=processor, images=images, audio=audio,
                             goal=goal, composite=composite, attention_mask=attention_mask, strict=strict,
                             checkpoint=checkpoint)
    if inputs is None:
        raise InputError("nothing to explain: pass inputs (text or ids), images=... or audio=...")
    if tokenizer is None and processor is not None:
        tokenizer = getattr(processor, "tokenizer", processor)
    if isinstance(inputs, Tensor) and inputs.is_floating_point() and inputs.dim() == 4:
        return _explain_image(model, inputs.to(device), goal, composite, strict, checkpoint, capture)
    embedding = input_embeddings(model)
    vocab = vocab_size(model)
    ids, mask = encode(inputs, tokenizer, attention_mask, vocab)
    ids, mask = ids.to(device), mask.to(device)
    config = getattr(model, "config", None)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    if decoder_inputs is not None and not seq2seq:
        raise InputError(f"{type(model).__name__} is not an encoder-decoder model: drop decoder_inputs")

    with torch.enable_grad():
        embeds = embed(embedding, ids, model).detach().requires_grad_(True)
        tensors = {"inputs_embeds": embeds, "attention_mask": mask}
        explained_mask = mask
        dec_ids = dec_embeds = None
        if seq2seq:
            dec_ids, dec_mask = _decoder_ids(model, decoder_inputs, tokenizer, ids.shape[0], vocab)
            dec_ids, explained_mask = dec_ids.to(device), dec_mask.to(device)
            dec_embeds = _decoder_embedding(model)(dec_ids).detach().requires_grad_(True)
            tensors.update(decoder_inputs_embeds=dec_embeds, decoder_attention_mask=explained_mask)
        graph = rewritten_graph(model, composite, tensors, {}, strict)
        outputs, latent = _run(graph, tensors, checkpoint, capture)
        scores, target_ids, positions = target_scores(model, outputs, goal, explained_mask, tokenizer)
        leaves = [embeds] if dec_embeds is None else [embeds, dec_embeds]
        grads = torch.autograd.grad(scores.sum(), leaves, allow_unused=True)
    relevance = token_relevance(embeds, grads[0], mask)
    tokens = [token_strings(row[m.bool()], tokenizer) for row, m in zip(ids, mask, strict=True)]
    target_tokens = None
    if tokenizer is not None and (target_ids >= 0).all():
        target_tokens = tokenizer.convert_ids_to_tokens(target_ids.tolist())
    att = Attribution(relevance.cpu(), tokens, ids.cpu(), mask.cpu(), target_ids.cpu(),
                      scores.detach().float().cpu(), positions.cpu(), graph.report, target_tokens,
                      latents=None if latent is None else {k: v.cpu() for k, v in latent.relevance().items()},
                      latent_values=None if latent is None else {k: v.cpu() for k, v in latent.values().items()})
    if dec_ids is not None:
        att.decoder_relevance = token_relevance(dec_embeds, grads[1], explained_mask).cpu()
        att.decoder_input_ids = dec_ids.cpu()
        att.decoder_tokens = [token_strings(row[m.bool()], tokenizer)
                              for row, m in zip(dec_ids, explained_mask, strict=True)]
    return att


def _run(graph: Any, tensors: dict[str, Tensor], checkpoint: str | None, capture: Sequence[str] | None
         ) -> tuple[dict[str, Tensor], Any]:
    """Run the rewritten graph, through the latent-relevance pass when ``capture`` names nodes."""
    if not capture:
        return graph(tensors, checkpoint), None
    from .taps import latent_pass

    latent = latent_pass(graph, capture)
    return latent(tensors), latent


def target_scores(model: nn.Module, outputs: dict[str, Tensor], goal: Target, mask: Tensor, tokenizer: Any
            ) -> tuple[Tensor, Tensor, Tensor]:
    """(explained scalar per row, target id per row, explained position per row)."""
    batch = mask.shape[0]
    positions = torch.full((batch,), -1, dtype=torch.long, device=mask.device)
    if isinstance(goal, Function):
        scores = goal.fn(outputs)
        if scores.shape != (batch,):
            raise InputError(f"the target function returned shape {tuple(scores.shape)}; it must return one "
                             f"scalar per row, shape ({batch},)")
        return scores, torch.full_like(positions, -1), positions
    logits = outputs.get("logits")
    if logits is None:
        raise InputError(f"{type(model).__name__} returns no logits ({list(outputs)}): explain a "
                         "function of its outputs with target=lxt_fx.targets.Function(fn)")
    if logits.dim() == 3:
        positions = last_positions(mask)
        logits = logits[torch.arange(batch, device=mask.device), positions]
    target_ids = goal.ids(logits.detach(), tokenizer)
    return goal.score(logits, target_ids, tokenizer), target_ids, positions


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
    """Pixel relevance ``[batch, H, W]`` (summed over channels) for an image classifier."""
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
        outputs, latent = _run(graph, tensors, checkpoint, capture)
        mask = torch.ones(batch, 1, dtype=torch.long, device=pixels.device)
        scores, target_ids, positions = target_scores(model, outputs, goal, mask, None)
        (grad,) = torch.autograd.grad(scores.sum(), leaf)
    relevance = (leaf.detach().float() * grad.float()).sum(1)
    return Attribution(relevance.cpu(), [[] for _ in range(batch)], torch.zeros(batch, 0, dtype=torch.long),
                       torch.zeros(batch, 0, dtype=torch.long), target_ids.cpu(), scores.detach().float().cpu(),
                       positions.cpu(), graph.report,
                       latents=None if latent is None else {k: v.cpu() for k, v in latent.relevance().items()},
                      latent_values=None if latent is None else {k: v.cpu() for k, v in latent.values().items()})


def explain_mixed(model: nn.Module, inputs: str | Sequence[str] | Tensor | None, *, tokenizer: Any,
                  processor: Any, images: Any, audio: Any, goal: Target, composite: Composite,
                  attention_mask: Tensor | None, strict: bool, checkpoint: str | None = None) -> Attribution:
    """Explain one scalar per row from text with ``images`` (pixel_values) and/or ``audio``
    (input_features / input_values) in one backward pass; see :func:`lxt_fx.explain`."""
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
    if seq2seq:  # speech-to-text: the text is the decoder's (default: its start token alone)
        vocab = getattr(_decoder_embedding(model), "num_embeddings", None) or config.vocab_size
        batch = next(iter(tensors.values())).shape[0]
        ids, mask = _decoder_ids(model, inputs, tokenizer, batch, vocab)
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
        static: dict[str, Any] = {}
        if spliced:  # M-RoPE positions from the ids, the image grid as a constant (see tracing.spliced)
            call, static = graph_inputs(model, ids.to(device), call | ({} if grid is None else {"image_grid_thw": grid}),
                                        static)
        graph = rewritten_graph(model, composite, call, static, strict)
        places = graph.plan.places
        if places and checkpoint is not None:
            raise InputError(f"{type(model).__name__} reads its token ids itself, so its token relevance is read "
                             "inside the graph, which checkpoint=... does not support yet: drop checkpoint")
        with recording_places() as seen:
            outputs, _ = _run(graph, call, checkpoint, None)
        place_values = seen.get("inputs_embeds", []) if places else []
        explained = mask.to(device) if mask is not None else torch.ones(
            next(iter(leaves.values())).shape[0], 1, dtype=torch.long, device=device)
        scores, target_ids, positions = target_scores(model, outputs, goal, explained, tokenizer)
        names = list(leaves)
        got = torch.autograd.grad(scores.sum(), [leaves[n] for n in names] + place_values, allow_unused=True)
        grads = dict(zip(names, got[:len(names)], strict=True))
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
    target_tokens = None
    if tokenizer is not None and (target_ids >= 0).all():
        target_tokens = tokenizer.convert_ids_to_tokens(target_ids.tolist())
    att = Attribution(relevance, tokens, torch.zeros(batch, 0, dtype=torch.long) if ids is None else ids.cpu(),
                      torch.zeros(batch, 0, dtype=torch.long) if mask is None else mask.cpu(), target_ids.cpu(),
                      scores.detach().float().cpu(), positions.cpu(), graph.report, target_tokens)
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
    """The tokens of one row of ids as the tokenizer spells them (the ids as text without a tokenizer)."""
    if tokenizer is None:
        return [str(i) for i in ids.tolist()]
    return tokenizer.convert_ids_to_tokens(ids.tolist())
