"""colour-vlm: a Qwen2-VL-shaped model answers "what colour is the <shape> ?" about an image of several objects.

The image is 24×24 pixels of grey textured noise with three objects of 8×8 pixels, each filling one of the
nine 2×2 blocks of 4-pixel patches that the model merges into one image token, at random, each a different
shape out of *square* (filled), *ring* (hollow), *cross* (both diagonals) and *plus* and a different colour
out of six. The question names one of the three shapes; the answer is the
colour word of that object. The label is set by a binding — the colour *of the named shape* — not by any
colour's presence: every image holds three colours, the other two from the same distribution, and the named
shape alone says nothing about the colour. Colours are distinct within an image, so removing the named object
leaves no object of the answer's colour.

The model is a :class:`~transformers.Qwen2VLForConditionalGeneration` (a ViT with 2-D rotary positions over
4-pixel patches, merged 2×2 into 9 image tokens, and a two-layer Qwen2 language model with M-RoPE); the
prompt is ``<s> what colour is the <shape> ? <|vision_start|> <image>×9 <|vision_end|>`` and the explained
scalar is the logit of the answer's colour word at the last position.

Ground truth: the named object's four patches (``"patches"`` ``[n, 6, 6]``) and the shape word in the
question (``"tokens"`` ``[n, L]``). ``region``: every patch, and the question's words (``what colour is the
<shape> ?``), so the random control of the evidence check blanks as many patches elsewhere and one other
question word. Ablation paints patches with the plain background grey and replaces words by ``<unk>``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ... import modalities
from .registry import register
from .task import Sample, Task, fit_one_cycle

SIZE, PATCH, MERGE, TEMPORAL, OBJECT, OBJECTS = 24, 4, 2, 2, 8, 3
GRID = SIZE // PATCH                                   # 6 patches a side
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "what", "colour", "is", "the", "?",
         "square", "ring", "cross", "plus",
         "red", "green", "blue", "yellow", "magenta", "cyan"]
PAD, BOS, UNK = 0, 1, 3
SHAPES = WORDS[9:13]
FIRST_SHAPE, FIRST_COLOUR = 9, 13
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1], [0.9, 0.1, 0.9],
                        [0.1, 0.9, 0.9]])
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 95, 94, 93, 92
TOKENS = (GRID // MERGE) ** 2                          # 9 image tokens
QUESTION = [BOS, 4, 5, 6, 7]                          # <s> what colour is the
SHAPE_AT = len(QUESTION)                               # the shape word's position
PROMPT = QUESTION + [0, 8, VISION_START] + [IMAGE_TOKEN] * TOKENS + [VISION_END]  # … <shape> ? <image> …
GREY, TEXTURE = 0.5, 0.06
LR = 3e-3
INIT = 0.08                                            # weight init std: the default 0.02 learns far slower here


def _stencils() -> Tensor:
    """``[4, 8, 8]`` boolean stencils: square (filled), ring (hollow), cross (both diagonals), plus."""
    s = torch.zeros(4, OBJECT, OBJECT, dtype=torch.bool)
    s[0, 1:7, 1:7] = True
    s[1] = True
    s[1, 2:6, 2:6] = False
    r, c = torch.meshgrid(torch.arange(OBJECT), torch.arange(OBJECT), indexing="ij")
    s[2] = ((r - c).abs() <= 1) | ((r + c - (OBJECT - 1)).abs() <= 1)   # three-pixel-wide diagonals
    s[3, 3:5, :] = True
    s[3, :, 3:5] = True
    return s


STENCILS = _stencils()


def draw(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(pixels [n, 3, 24, 24], ids [n, L], label colour [n], object patches [n, 6, 6] bool)``."""
    blocks = GRID // MERGE                             # 3×3 blocks of 2×2 patches (one image token each)
    x = GREY + TEXTURE * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    shapes = torch.argsort(torch.rand(n, len(SHAPES), generator=generator), dim=1)[:, :OBJECTS]
    colours = torch.argsort(torch.rand(n, len(COLOURS), generator=generator), dim=1)[:, :OBJECTS]
    places = torch.argsort(torch.rand(n, blocks * blocks, generator=generator), dim=1)[:, :OBJECTS]
    asked = torch.randint(0, OBJECTS, (n,), generator=generator)
    rows = torch.arange(n)
    i, j = (places // blocks) * MERGE, (places % blocks) * MERGE     # [n, OBJECTS] top-left patch
    mask = torch.zeros(n, GRID, GRID, dtype=torch.bool)
    for b in range(n):
        for o in range(OBJECTS):
            y, z = int(i[b, o]) * PATCH, int(j[b, o]) * PATCH
            box = x[b, :, y:y + OBJECT, z:z + OBJECT]
            box[:, STENCILS[shapes[b, o]]] = COLOURS[colours[b, o]][:, None]
        a = int(asked[b])
        mask[b, i[b, a]:i[b, a] + MERGE, j[b, a]:j[b, a] + MERGE] = True
    ids = torch.tensor(PROMPT).repeat(n, 1)
    ids[:, SHAPE_AT] = FIRST_SHAPE + shapes[rows, asked]
    return x, ids, colours[rows, asked], mask


class ColourVLM(Task):
    """The colour of the named shape, answered by a tiny Qwen2-VL (see the module docstring)."""

    name = "colour-vlm"
    family = "qwen2_vl"
    description = ("Qwen2-VL answers 'what colour is the <shape> ?' about three coloured shapes at random "
                   "places; ground truth: the named object's patches and the shape word")
    modalities = ("patches", "tokens")
    has_attention_rollout = True

    def build(self, seed: int = 0) -> nn.Module:
        import transformers as tf

        torch.manual_seed(seed)
        vision = dict(initializer_range=INIT, depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=PATCH,
                      spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL, in_channels=3)
        text = dict(initializer_range=INIT, vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=BOS,
                    eos_token_id=2, rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2],
                                                     "rope_theta": 10000.0})
        cfg = tf.Qwen2VLConfig(vision_config=vision, text_config=text, initializer_range=INIT, image_token_id=IMAGE_TOKEN,
                               video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                               vision_end_token_id=VISION_END, bos_token_id=BOS, eos_token_id=2, pad_token_id=PAD,
                               attn_implementation="eager")
        return tf.Qwen2VLForConditionalGeneration(cfg).eval()

    # --- data -----------------------------------------------------------------------------------------
    def sample(self, n: int, seed: int) -> Sample:
        x, ids, colour, patches = draw(n, torch.Generator().manual_seed(seed))
        tokens = torch.zeros(ids.shape, dtype=torch.bool)
        tokens[:, SHAPE_AT] = True
        question = torch.zeros(ids.shape, dtype=torch.bool)
        question[:, 1:SHAPE_AT + 2] = True                # what colour is the <shape> ?
        return Sample({"input_ids": ids, "pixel_values": x}, colour + FIRST_COLOUR,
                      {"patches": patches, "tokens": tokens}, {"patches": torch.ones_like(patches), "tokens": question})

    def ablate(self, sample: Sample, mask: dict[str, Tensor]) -> dict[str, Tensor]:
        pixels = mask["patches"].repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2)
        x = sample.inputs["pixel_values"].masked_fill(pixels[:, None], GREY)
        ids = sample.inputs["input_ids"].masked_fill(mask["tokens"], UNK)
        return {"input_ids": ids, "pixel_values": x}

    # --- the model's call ------------------------------------------------------------------------------
    @staticmethod
    def call(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The model's own keyword call: ids, flattened patches, their grids, the image-token types."""
        ids = inputs["input_ids"]
        flat, grid = modalities.flatten_patches(inputs["pixel_values"], PATCH, MERGE, TEMPORAL)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": flat,
                "image_grid_thw": grid, "mm_token_type_ids": (ids == IMAGE_TOKEN).int()}

    def score(self, model: nn.Module, inputs: dict[str, Tensor], target: Tensor) -> Tensor:
        logits = model(**self.call(inputs)).logits[:, -1]
        return logits.gather(1, target[:, None]).squeeze(1)

    def predict(self, model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            return model(**self.call(inputs)).logits[:, -1].argmax(-1)

    def train(self, model: nn.Module, *, seed: int = 0, log: Any = print, steps: int = 1500,
              batch: int = 64) -> dict[str, float]:
        generator = torch.Generator().manual_seed(1000 + seed)
        torch.manual_seed(seed)

        def batch_loss() -> Tensor:
            x, ids, colour, _ = draw(batch, generator)
            logits = model(**self.call({"input_ids": ids, "pixel_values": x})).logits[:, -1]
            return nn.functional.cross_entropy(logits, colour + FIRST_COLOUR)

        seconds = fit_one_cycle(model, steps, LR, batch_loss, log=log, name=self.name)
        held = self.sample(512, seed=10_000 + seed)
        accuracy = float((self.predict(model, held.inputs) == held.target).double().mean())
        return {"steps": steps, "seconds": seconds, "accuracy": accuracy}

    # --- LRP --------------------------------------------------------------------------------------------
    def explain(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        from ...explain import explain

        att = explain(model, sample.inputs["input_ids"], images=sample.inputs["pixel_values"],
                             target=sample.target.tolist(), composite=composite)
        return {"patches": att.image_relevance.detach().float(), "tokens": att.relevance.detach().float()}

    def absorption(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        """AttnLRP's shares per row from one ``explain``: ``"first"`` — the ``<s>`` token's ``|R|`` over ``|R|``
        of every token and patch; ``"kept"`` — tokens' and patches' relevance summed, over the explained logit.
        Positions are rotary (M-RoPE in the language model, 2-D RoPE in the vision tower): nothing is added,
        so no position share."""
        from ...explain import explain

        att = explain(model, sample.inputs["input_ids"], images=sample.inputs["pixel_values"],
                      target=sample.target.tolist(), composite=composite)
        tokens, patches = att.relevance.double(), att.image_relevance.double().flatten(1)
        total = tokens.abs().sum(1) + patches.abs().sum(1)
        return {"first": tokens[:, 0].abs() / total.clamp_min(1e-30),
                "kept": (tokens.sum(1) + patches.sum(1)) / att.target_scores.double()}

    # --- gradient methods -------------------------------------------------------------------------------
    def leaves(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        embed = model.get_input_embeddings()
        with torch.no_grad():
            tokens = embed(sample.inputs["input_ids"])
        return {"patches": sample.inputs["pixel_values"].detach().clone(), "tokens": tokens.detach()}

    def forward_leaves(self, model: nn.Module, sample: Sample, leaves: dict[str, Tensor]) -> Tensor:
        """The model's forward from the pixels and the token embeddings: the vision tower's merged features
        replace the image-token embeddings (as the model splices them), M-RoPE positions from the ids."""
        pixels, embeds = leaves["patches"], leaves["tokens"]
        reps = pixels.shape[0] // len(sample)   # Captum may stack several copies of the batch
        ids = sample.inputs["input_ids"].repeat(reps, 1)
        call = self.call({"input_ids": ids, "pixel_values": pixels})
        inner = model.model
        features = torch.cat(inner.get_image_features(call["pixel_values"], call["image_grid_thw"]).pooler_output)
        image = (ids == IMAGE_TOKEN)[..., None]
        spliced = embeds.masked_scatter(image, features.to(embeds.dtype))
        positions, _ = inner.get_rope_index(ids, call["mm_token_type_ids"], call["image_grid_thw"],
                                            attention_mask=call["attention_mask"])
        logits = model(inputs_embeds=spliced, attention_mask=call["attention_mask"], position_ids=positions).logits
        return logits[:, -1].gather(1, sample.target.repeat(reps)[:, None]).squeeze(1)

    def to_map(self, modality: str, leaf_relevance: Tensor) -> Tensor:
        if modality == "tokens":
            return leaf_relevance.sum(-1)
        return modalities.patch_grid(leaf_relevance.sum(1), PATCH)

    def rollout(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        """Attention rollout (Abnar & Zuidema 2020) through the language model and the vision tower.

        Language model: ``Â_l = ½(mean_heads A_l + I)``, rows renormalised, ``R = Â_L ⋯ Â_1``; the last row
        of ``R`` weights every position. An image token's weight is passed to its 2×2 merged patches through
        the vision tower's own rollout (the same rule over its blocks, patches in merge order), summed over the
        image tokens. Text positions keep their weight."""
        from .audio import _eager

        call = self.call(sample.inputs)
        captured: list[Tensor] = []

        def keep(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(_vision_attention(module, *args, **kwargs))

        blocks = [b.attn for b in model.model.visual.blocks]
        with _eager(model), torch.no_grad():
            handles = [b.register_forward_pre_hook(keep, with_kwargs=True) for b in blocks]
            try:
                out = model(**call, output_attentions=True)
            finally:
                for h in handles:
                    h.remove()
        n, length = sample.inputs["input_ids"].shape
        roll = _rollout(out.attentions)[:, -1]                               # [n, L]
        image = sample.inputs["input_ids"] == IMAGE_TOKEN
        tokens = roll.masked_fill(image, 0.0)
        to_tokens = roll[image].reshape(n, TOKENS)                           # weight per merged image token
        patches = GRID * GRID
        vision = _vision_rollout(captured, n, patches)                        # [n, patches, patches] merge order
        merged = vision.reshape(n, TOKENS, MERGE * MERGE, patches).mean(2)    # a merged token reads its 4 rows
        flat = (to_tokens[:, None, :] @ merged).squeeze(1)                    # [n, patches] in merge order
        grid = flat.reshape(n, GRID // MERGE, GRID // MERGE, MERGE, MERGE).permute(0, 1, 3, 2, 4)
        return {"patches": grid.reshape(n, GRID, GRID).float(), "tokens": tokens.float()}


def _rollout(attentions: tuple[Tensor, ...]) -> Tensor:
    """``R = Â_L ⋯ Â_1`` with ``Â = ½(mean_heads A + I)``, rows renormalised; ``[n, L, L]``."""
    size = attentions[0].shape[-1]
    roll = torch.eye(size).expand(attentions[0].shape[0], -1, -1)
    for attn in attentions:
        a = 0.5 * (attn.mean(1) + torch.eye(size))
        roll = (a / a.sum(-1, keepdim=True)) @ roll
    return roll


def _vision_attention(module: nn.Module, hidden_states: Tensor, cu_seqlens: Tensor | None = None,
                      position_embeddings: tuple[Tensor, Tensor] | None = None, **_: Any) -> Tensor:
    """A Qwen2-VL vision block's attention probabilities ``[heads, patches, patches]`` over all images (zero
    between images), recomputed from its input as the block computes them (it does not return them)."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    length = hidden_states.shape[0]
    q, k, _v = module.qkv(hidden_states).reshape(length, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    scores = torch.einsum("qhd,khd->hqk", q, k) * module.scaling
    image = torch.zeros(length, dtype=torch.long)
    image[cu_seqlens[1:-1].long()] = 1
    image = image.cumsum(0)
    scores = scores.masked_fill(image[:, None] != image[None, :], float("-inf"))
    return scores.softmax(-1)


def _vision_rollout(captured: list[Tensor], n: int, patches: int) -> Tensor:
    """The vision tower's rollout per image from its blocks' attention ``[heads, n·patches, n·patches]``
    (one sequence, block-diagonal per image) or ``[1, heads, …]``."""
    rows = []
    for attn in captured:
        a = attn.reshape(-1, *attn.shape[-2:]).mean(0)                      # [n·p, n·p]
        rows.append(torch.stack([a[b * patches:(b + 1) * patches, b * patches:(b + 1) * patches]
                                 for b in range(n)])[:, None])
    return _rollout(tuple(rows))


register(ColourVLM.name, ColourVLM)
