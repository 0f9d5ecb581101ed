"""Vision ground-truth tasks: coloured shapes on textured noise, drawn with torch.

A scene is a 32 × 32 image cut into 4 × 4-pixel patches (an 8 × 8 grid). Its background is textured noise
(smooth luminance blobs, finer grain and a little chroma); 3 to 5 objects sit in distinct cells of a 4 × 4
grid of 2 × 2-patch cells, each a square, circle, triangle or cross of random size and sub-cell offset in
one of six colours (red, green, blue, yellow, magenta, cyan, each jittered). Where an object lies is random
per example, and the distractors are drawn from the same shapes and colours, so no position and no shape
alone gives the answer: the answer is a *binding* of a colour to a shape.

* ``shapes-vit`` (``ViTForImageClassification``) and ``shapes-dinov2`` (``Dinov2WithRegistersForImageClassification``,
  four register tokens): exactly one object is red; the class is its shape. Training also shows scenes with
  no red object, class ``none``, so a scene whose red object is removed has a defined answer. Ground truth:
  the four patches of the red object's cell.
* ``clip-shapes`` (``CLIPModel``, 8 × 8-pixel patches: one object cell is one patch of a 4 × 4 grid): a
  caption ``<bos> w w colour shape w w <eos>`` (six words, the filler words ``a``, ``the``, ``photo`` … and
  the pair at a random place) against a scene; the pair matches when an object of that colour *and* that
  shape is in the scene. The scene's objects have distinct (colour, shape) pairs, and the held-out
  negatives name a colour and a shape that are both present, on different objects. The model is trained
  with a sigmoid loss on ``logits_per_image`` (every scene against every caption of the batch and all 24
  pairs), so a pair matches when its similarity logit is positive; a caption with ``<pad>`` for its colour
  or shape never matches, one with ``<pad>`` for a filler word matches as before. The explained scalar is
  the similarity of a matching pair (:class:`lxt_fx.targets.Similarity`); ground truth: the matching
  object's patch and the caption's colour and shape tokens.

Removing evidence means repainting patches with the scene's own background (kept in ``Sample.extra``) and,
for captions, replacing a token by ``<pad>``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
import transformers as tf
from torch import Tensor, nn

from ... import explain as lxt_explain
from ...modalities import patch_grid
from ...targets import Similarity
from .registry import register
from .task import Sample, Task, clipped_step

SIZE, PATCH, CELL = 32, 4, 8          # image pixels, patch pixels, object cell pixels (2 × 2 patches)
GRID = SIZE // PATCH                  # 8 × 8 patches
CELLS = SIZE // CELL                  # 4 × 4 object cells
SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = {"red": (0.92, 0.12, 0.10), "green": (0.12, 0.80, 0.15), "blue": (0.15, 0.25, 0.95),
           "yellow": (0.92, 0.88, 0.12), "magenta": (0.88, 0.15, 0.88), "cyan": (0.12, 0.86, 0.90)}
COLOUR_NAMES = tuple(COLOURS)
RED = COLOUR_NAMES.index("red")


# --- drawing --------------------------------------------------------------------------------------------

def background(n: int, g: torch.Generator) -> Tensor:
    """``[n, 3, 32, 32]`` in [0, 1]: smooth luminance blobs, finer grain, pixel noise and a little chroma."""
    def up(t: Tensor) -> Tensor:
        return F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False)

    level = 0.30 + 0.25 * torch.rand(n, 1, 1, 1, generator=g)
    lum = level + 0.30 * up(torch.rand(n, 1, 4, 4, generator=g) - 0.5) \
        + 0.20 * up(torch.rand(n, 1, 8, 8, generator=g) - 0.5)
    chroma = 0.10 * up(torch.rand(n, 3, 4, 4, generator=g) - 0.5)
    grain = 0.06 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return (lum + chroma + grain).clamp(0, 1)


def stamps(shapes: Tensor, g: torch.Generator) -> Tensor:
    """``[..., 8, 8]`` boolean silhouettes of ``shapes`` (indices into :data:`SHAPES`), random size and offset."""
    size = shapes.shape
    radius = 2.6 + 1.0 * torch.rand(*size, 1, 1, generator=g)
    cy = 4.0 + (torch.rand(*size, 1, 1, generator=g) - 0.5)
    cx = 4.0 + (torch.rand(*size, 1, 1, generator=g) - 0.5)
    coords = torch.arange(CELL, dtype=torch.float32) + 0.5
    y, x = coords[:, None], coords[None, :]
    dy, dx = y - cy, x - cx
    square = (dy.abs() <= 0.8 * radius) & (dx.abs() <= 0.8 * radius)
    circle = dy ** 2 + dx ** 2 <= radius ** 2
    triangle = (dy >= -radius) & (dy <= 0.8 * radius) & (dx.abs() <= 0.55 * (dy + radius))
    arm = radius / 3
    cross = ((dx.abs() <= arm) & (dy.abs() <= radius)) | ((dy.abs() <= arm) & (dx.abs() <= radius))
    which = shapes[..., None, None]
    return torch.where(which == 0, square, torch.where(which == 1, circle, torch.where(which == 2, triangle, cross)))


def paint(bg: Tensor, cells: Tensor, colours: Tensor, shapes: Tensor, active: Tensor, g: torch.Generator) -> Tensor:
    """Objects (``[n, K]`` cell index, colour index, shape index, active flag) painted over ``bg`` ([0, 1])."""
    n, k = cells.shape
    sil = stamps(shapes, g) & active[..., None, None]                       # [n, K, 8, 8]
    canvas = torch.zeros(n, k, CELLS, CELLS, CELL, CELL, dtype=torch.bool)
    rows = torch.arange(n)[:, None].expand(n, k)
    slots = torch.arange(k)[None, :].expand(n, k)
    canvas[rows, slots, cells // CELLS, cells % CELLS] = sil
    canvas = canvas.permute(0, 1, 2, 4, 3, 5).reshape(n, k, SIZE, SIZE)    # [n, K, 32, 32]
    rgb = torch.tensor(list(COLOURS.values()))[colours]                    # [n, K, 3]
    rgb = (rgb + 0.06 * (torch.rand(n, k, 3, generator=g) - 0.5) * 2).clamp(0, 1)
    ink = (canvas[:, :, None].float() * rgb[..., None, None]).sum(1)        # [n, 3, 32, 32]
    covered = canvas.any(1, keepdim=True)
    grain = 0.04 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return torch.where(covered, (ink + grain).clamp(0, 1), bg)


def normalize(image: Tensor) -> Tensor:
    """[0, 1] pixels → the models' input scale [-1, 1]."""
    return (image - 0.5) / 0.5


def cell_mask(cells: Tensor, patch: int = PATCH) -> Tensor:
    """``[n, 32/patch, 32/patch]`` boolean: the patches of each row's cell (four for 4-pixel patches)."""
    n, per = cells.shape[0], CELL // patch
    mask = torch.zeros(n, CELLS, CELLS, dtype=torch.bool)
    mask[torch.arange(n), cells // CELLS, cells % CELLS] = True
    return mask.repeat_interleave(per, 1).repeat_interleave(per, 2)


def repaint(pixels: Tensor, bg: Tensor, patches: Tensor) -> Tensor:
    """``pixels`` with the patches marked in ``patches`` ``[n, h, w]`` replaced by ``bg`` (both normalized)."""
    patch = SIZE // patches.shape[-1]
    where = patches.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]
    return torch.where(where.to(pixels.device), bg.to(pixels.device, pixels.dtype), pixels)


def draw_cells(n: int, k: int, g: torch.Generator) -> Tensor:
    """``[n, k]`` distinct cells per row."""
    return torch.argsort(torch.rand(n, CELLS * CELLS, generator=g), dim=1)[:, :k]


def count_objects(n: int, g: torch.Generator, low: int = 3, high: int = 5) -> Tensor:
    """``[n, high]`` active flags: the first ``low..high`` slots of each row are objects."""
    count = torch.randint(low, high + 1, (n,), generator=g)
    return torch.arange(high)[None, :] < count[:, None]


# --- rollout --------------------------------------------------------------------------------------------

def rollout_rows(attentions: tuple[Tensor, ...]) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): ``Π_l (Ā_l + I) / 2`` with rows renormalized, ``Ā_l`` the
    head-averaged attention of layer ``l``; ``[n, L, L]``."""
    joint = None
    for att in attentions:
        mean = att.detach().double().mean(1)
        step = 0.5 * (mean + torch.eye(mean.shape[-1], dtype=mean.dtype))
        step = step / step.sum(-1, keepdim=True)
        joint = step if joint is None else step @ joint
    return joint


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with eager attention (which returns the probabilities), then restore its setting."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _repeat(t: Tensor, batch: int) -> Tensor:
    """``t`` tiled along dim 0 to ``batch`` rows (Captum stacks its steps as whole copies of the batch)."""
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise ValueError(f"leaves of batch {batch} for a sample of {t.shape[0]} rows: pass a multiple")
    return t.repeat(batch // t.shape[0], *([1] * (t.dim() - 1)))


# --- where the relevance goes besides the inputs -------------------------------------------------------

def absorbers(model: nn.Module) -> dict[str, Tensor]:
    """The learned tensors added to or concatenated with the inputs' path: position embeddings, the CLS
    (class) token, register tokens; named ``position``, ``cls``, ``registers`` (``text_position`` for a
    dual encoder's text tower)."""
    if isinstance(model, tf.CLIPModel):
        vis, text = model.vision_model.embeddings, model.text_model.embeddings
        return {"position": vis.position_embedding.weight, "cls": vis.class_embedding,
                "text_position": text.position_embedding.weight}
    emb = getattr(model, model.base_model_prefix).embeddings
    out = {"position": emb.position_embeddings, "cls": emb.cls_token}
    if getattr(emb, "register_tokens", None) is not None:
        out["registers"] = emb.register_tokens
    return out


def absorbed(model: nn.Module, task: Task, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
    """Per row, the relevance that reaches each of :func:`absorbers` (``Σ p ⊙ ∂s/∂p`` through the rewritten
    graph, one row at a time), beside ``score`` (the explained scalar) and ``inputs`` (what reaches the
    explained inputs: pixels, and the caption's token embeddings). Whatever is left, ``score − inputs −
    Σ absorbers``, went to the biases and the softmax rule's term. ``<name>_abs`` holds the same per
    position in magnitude, ``Σ_i |Σ_d p_id ∂s/∂p_id|`` (``inputs_abs``: ``Σ |R|`` over patches and tokens)."""
    from ...composites import for_model
    from ...rewrite import recording_places
    from ...session import rewritten_graph

    composite = composite if composite is not None else for_model(model)
    params = absorbers(model)
    rows: dict[str, list[float]] = {k: [] for k in ("score", "inputs", "inputs_abs", *params,
                                                     *(f"{k}_abs" for k in params))}
    patch = task.patch if isinstance(task, ClipShapes) else PATCH
    for i in range(len(sample)):
        call = {k: v[i:i + 1].clone() for k, v in sample.inputs.items()}
        with torch.enable_grad():
            call["pixel_values"].requires_grad_(True)
            graph = rewritten_graph(model, composite, call, {})
            with recording_places() as seen:
                out = graph(call)
            if "logits_per_image" in out:
                score = out["logits_per_image"][0, 0]
            else:
                score = out["logits"][0, int(sample.target[i])]
            places = seen.get("inputs_embeds", []) if graph.plan.places else []
            leaves = [call["pixel_values"], *places, *params.values()]
            grads = torch.autograd.grad(score, leaves, allow_unused=True)
        rel = [(x.detach() * g).double() if g is not None else torch.zeros(()) for x, g in zip(leaves, grads,
                                                                                               strict=True)]
        rows["score"].append(float(score.detach()))
        rows["inputs"].append(float(sum(r.sum() for r in rel[:1 + len(places)])))
        magnitude = patch_grid(rel[0].sum(1), patch).abs().sum()
        magnitude = magnitude + sum((r.sum(-1).abs().sum() for r in rel[1:1 + len(places)]), torch.zeros(()))
        rows["inputs_abs"].append(float(magnitude))
        for k, r in zip(params, rel[1 + len(places):], strict=True):
            rows[k].append(float(r.sum()))
            rows[f"{k}_abs"].append(float(r.sum(-1).abs().sum()) if r.dim() else 0.0)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in rows.items()}


def absorption_shares(model: nn.Module, task: Task, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
    """Per row: each absorber's share of the embedding layer's relevance in magnitude, ``|R_a| / (Σ_a |R_a| +
    Σ_i |R_i|)`` with ``R_a`` per position of an absorber (position embedding rows, the CLS token, each
    register) and ``R_i`` per patch / token; ``"first"`` is the CLS token's (the first position); ``"kept"``
    is ``Σ R / f``, what reaches the patches and tokens over the explained score."""
    r = absorbed(model, task, sample, composite)
    names = [k[:-4] for k in r if k.endswith("_abs") and k != "inputs_abs"]
    total = (r["inputs_abs"] + sum(r[f"{k}_abs"] for k in names)).clamp_min(1e-30)
    out = {("first" if k == "cls" else k): r[f"{k}_abs"] / total for k in names}
    out["kept"] = r["inputs"] / r["score"]
    return out


# --- shapes: which shape is the red object? --------------------------------------------------------------

class RedShapeTask(Task):
    """The class is the shape of the one red object (or ``none``); ground truth: its four patches."""

    modalities = ("patches",)
    has_attention_rollout = True
    labels = (*SHAPES, "none")
    steps = 400
    batch = 64
    lr = 2e-3
    log_every = 250
    no_red = 0.15              # share of training scenes without a red object

    def scenes(self, n: int, g: torch.Generator, red: Tensor) -> dict[str, Tensor]:
        """Raw scene draws: ``red`` ``[n]`` bool, whether the scene holds its (one) red object."""
        active = count_objects(n, g)
        cells = draw_cells(n, active.shape[1], g)
        shapes = torch.randint(0, len(SHAPES), active.shape, generator=g)
        others = torch.randint(1, len(COLOURS), active.shape, generator=g)
        others = torch.where(others <= RED, others - 1, others)                # any colour but red
        colours = others.clone()
        colours[:, 0] = torch.where(red, torch.full_like(red, RED, dtype=torch.long), others[:, 0])
        bg = background(n, g)
        image = paint(bg, cells, colours, shapes, active, g)
        label = torch.where(red, shapes[:, 0], torch.full_like(shapes[:, 0], len(SHAPES)))
        return {"pixels": normalize(image), "background": normalize(bg), "label": label, "cell": cells[:, 0],
                "cells": cells, "colours": colours, "shapes": shapes, "active": active}

    def sample(self, n: int, seed: int) -> Sample:
        g = torch.Generator().manual_seed(10_000 + seed)
        s = self.scenes(n, g, torch.ones(n, dtype=torch.bool))
        region = torch.ones(n, GRID, GRID, dtype=torch.bool)
        return Sample({"pixel_values": s["pixels"]}, s["label"], {"patches": cell_mask(s["cell"])},
                      {"patches": region}, {"background": s["background"], "cells": s["cells"],
                                            "colours": s["colours"], "shapes": s["shapes"], "active": s["active"]})

    def ablate(self, sample: Sample, mask: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"pixel_values": repaint(sample.inputs["pixel_values"], sample.extra["background"], mask["patches"])}

    def score(self, model: nn.Module, inputs: dict[str, Tensor], target: Tensor) -> Tensor:
        logits = model(**inputs).logits
        return logits.gather(1, target.to(logits.device)[:, None]).squeeze(1)

    def predict(self, model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            return model(**inputs).logits.argmax(-1).cpu()

    def explain(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        att = lxt_explain(model, images=sample.inputs["pixel_values"], target=sample.target, composite=composite)
        return {"patches": att.image_relevance}

    def leaves(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        return {"patches": sample.inputs["pixel_values"].detach()}

    def forward_leaves(self, model: nn.Module, sample: Sample, leaves: dict[str, Tensor]) -> Tensor:
        pixels = leaves["patches"]
        return self.score(model, {"pixel_values": pixels}, _repeat(sample.target, pixels.shape[0]))

    def to_map(self, modality: str, leaf_relevance: Tensor) -> Tensor:
        return patch_grid(leaf_relevance.sum(1), PATCH)

    def absorption(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        """See :func:`absorption_shares`: ``position``, ``first`` (the CLS token), ``registers``, ``kept``."""
        return absorption_shares(model, self, sample, composite)

    def rollout(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        with torch.no_grad(), eager_attention(model):
            out = model(**sample.inputs, output_attentions=True)
        joint = rollout_rows(out.attentions)
        first = joint.shape[-1] - GRID * GRID                      # CLS (and registers) come first
        return {"patches": joint[:, 0, first:].reshape(-1, GRID, GRID).float()}

    def train(self, model: nn.Module, *, seed: int = 0, log: Any = print) -> dict[str, float]:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=0.05)
        warm = self.steps // 20
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, self.steps) / self.steps)))
        held = self.sample(256, seed=999)
        start = time.perf_counter()
        model.train()
        for step in range(self.steps):
            red = torch.rand(self.batch, generator=g) >= self.no_red
            s = self.scenes(self.batch, g, red)
            loss = F.cross_entropy(model(pixel_values=s["pixels"]).logits, s["label"])
            clipped_step(loss, model, opt, sched)
            if (step + 1) % self.log_every == 0:
                model.eval()
                acc = float((self.predict(model, held.inputs) == held.target).float().mean())
                model.train()
                log(f"{self.name} step {step + 1}: loss {loss.item():.3f}, held-out accuracy {acc:.3f}")
        model.eval()
        acc = float((self.predict(model, held.inputs) == held.target).float().mean())
        return {"steps": float(self.steps), "seconds": time.perf_counter() - start, "accuracy": acc}


class ShapesViT(RedShapeTask):
    name = "shapes-vit"
    family = "vit"
    description = "ViT: the shape of the one red object among 3–5 coloured shapes on textured noise"

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        cfg = tf.ViTConfig(image_size=SIZE, patch_size=PATCH, num_channels=3, hidden_size=64, num_hidden_layers=4,
                           num_attention_heads=4, intermediate_size=128, num_labels=len(self.labels),
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           id2label=dict(enumerate(self.labels)), label2id={v: i for i, v in enumerate(self.labels)})
        return tf.ViTForImageClassification(cfg).eval()


class ShapesDinov2(RedShapeTask):
    name = "shapes-dinov2"
    family = "dinov2"
    description = "DINOv2 with 4 register tokens: the shape of the one red object among 3–5 coloured shapes"

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        cfg = tf.Dinov2WithRegistersConfig(
            image_size=SIZE, patch_size=PATCH, num_channels=3, hidden_size=64, num_hidden_layers=4,
            num_attention_heads=4, mlp_ratio=2, num_register_tokens=4, layerscale_value=1.0,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0,
            num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id={v: i for i, v in enumerate(self.labels)})
        return tf.Dinov2WithRegistersForImageClassification(cfg).eval()


# --- clip-shapes: does the caption name an object in the scene? ------------------------------------------

PAD, BOS = 0, 1
FILLERS = ("a", "the", "photo", "of", "with", "picture")
WORDS = 6                                     # caption words between <bos> and <eos>
EOS = 2 + len(COLOURS) + len(SHAPES) + len(FILLERS)   # the highest id: CLIP pools the text at its <eos>
VOCAB = EOS + 1


def colour_id(c: Tensor) -> Tensor:
    return c + 2


def shape_id(s: Tensor) -> Tensor:
    return s + 2 + len(COLOURS)


def captions(colour: Tensor, shape: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``([n, 8] ids, [n] position of the colour word)``: ``<bos>`` six words ``<eos>``, the words filler
    (``a``, ``the``, ``photo`` …) except ``colour shape`` side by side at a random place."""
    n = colour.shape[0]
    rows = torch.arange(n)
    words = 2 + len(COLOURS) + len(SHAPES) + torch.randint(0, len(FILLERS), (n, WORDS), generator=g)
    at = torch.randint(0, WORDS - 1, (n,), generator=g)
    words[rows, at] = colour_id(colour)
    words[rows, at + 1] = shape_id(shape)
    ids = torch.cat([torch.full((n, 1), BOS), words, torch.full((n, 1), EOS)], 1)
    return ids, at + 1


class ClipShapes(Task):
    """A caption ``colour shape`` matches a scene when an object of that colour and shape is in it."""

    name = "clip-shapes"
    family = "clip"
    description = ("CLIP: does the caption '… colour shape …' name an object among 3–5 coloured shapes? "
                   "(similarity logit > 0)")
    modalities = ("tokens", "patches")
    has_attention_rollout = True
    steps = 800
    batch = 64
    lr = 2e-3
    log_every = 250
    padded = 0.1               # share of training captions with <pad> for the colour or shape: never a match
    patch = 8                  # one object per patch: a 4 × 4 grid
    dropped = 0.15             # share of filler words replaced by <pad> in training (no change of the label)

    @property
    def grid(self) -> int:
        return SIZE // self.patch

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      dropout=0.0, attention_dropout=0.0)
        cfg = tf.CLIPConfig(text_config=dict(vocab_size=VOCAB, max_position_embeddings=WORDS + 2, eos_token_id=EOS,
                                             bos_token_id=BOS, pad_token_id=PAD, **common),
                            vision_config=dict(image_size=SIZE, patch_size=self.patch, **common), projection_dim=32)
        return tf.CLIPModel(cfg).eval()

    def scenes(self, n: int, g: torch.Generator) -> dict[str, Tensor]:
        """Scenes whose objects have distinct (colour, shape) pairs."""
        active = count_objects(n, g)
        k = active.shape[1]
        pairs = torch.argsort(torch.rand(n, len(COLOURS) * len(SHAPES), generator=g), dim=1)[:, :k]
        colours, shapes = pairs // len(SHAPES), pairs % len(SHAPES)
        cells = draw_cells(n, k, g)
        bg = background(n, g)
        image = paint(bg, cells, colours, shapes, active, g)
        present = torch.zeros(n, len(COLOURS), len(SHAPES), dtype=torch.bool)
        present[torch.arange(n)[:, None].expand(n, k), colours, shapes] = active
        return {"pixels": normalize(image), "background": normalize(bg), "cells": cells, "colours": colours,
                "shapes": shapes, "active": active, "present": present}

    def negatives(self, s: dict[str, Tensor], g: torch.Generator) -> tuple[Tensor, Tensor]:
        """A colour and a shape both in the scene, on different objects (else any absent pair)."""
        n, k = s["colours"].shape
        i = torch.randint(0, 1 << 30, (n, 2), generator=g)
        count = s["active"].sum(1)
        a, b = i[:, 0] % count, i[:, 1] % count
        rows = torch.arange(n)
        colour, shape = s["colours"][rows, a], s["shapes"][rows, b]
        absent = ~s["present"][rows, colour, shape]
        rc = torch.randint(0, len(COLOURS), (n,), generator=g)
        rs = torch.randint(0, len(SHAPES), (n,), generator=g)
        # fall back to a random absent pair where the two picks were one object's own pair
        for _ in range(8):
            still = ~absent
            colour, shape = torch.where(still, rc, colour), torch.where(still, rs, shape)
            absent = ~s["present"][rows, colour, shape]
            rc = torch.randint(0, len(COLOURS), (n,), generator=g)
            rs = torch.randint(0, len(SHAPES), (n,), generator=g)
        return colour, shape

    def sample(self, n: int, seed: int) -> Sample:
        """Matching pairs: the caption names the first object (the ground truth)."""
        g = torch.Generator().manual_seed(20_000 + seed)
        s = self.scenes(n, g)
        ids, at = captions(s["colours"][:, 0], s["shapes"][:, 0], g)
        rows = torch.arange(n)
        tokens = torch.zeros(n, WORDS + 2, dtype=torch.bool)
        tokens[rows, at] = True
        tokens[rows, at + 1] = True
        words = torch.zeros(n, WORDS + 2, dtype=torch.bool)
        words[:, 1:-1] = True
        return Sample({"input_ids": ids, "pixel_values": s["pixels"]}, torch.ones(n, dtype=torch.long),
                      {"tokens": tokens, "patches": cell_mask(s["cells"][:, 0], self.patch)},
                      {"tokens": words, "patches": torch.ones(n, self.grid, self.grid, dtype=torch.bool)},
                      {"background": s["background"], "cells": s["cells"], "colours": s["colours"],
                       "shapes": s["shapes"], "active": s["active"]})

    def pairs(self, n: int, seed: int) -> tuple[dict[str, Tensor], Tensor]:
        """Held-out pairs, half matching, half hard negatives: ``(inputs, match [n])`` for the accuracy."""
        g = torch.Generator().manual_seed(30_000 + seed)
        s = self.scenes(n, g)
        match = torch.arange(n) % 2 == 0
        nc, ns = self.negatives(s, g)
        ids, _ = captions(torch.where(match, s["colours"][:, 0], nc), torch.where(match, s["shapes"][:, 0], ns), g)
        return {"input_ids": ids, "pixel_values": s["pixels"]}, match.long()

    def ablate(self, sample: Sample, mask: dict[str, Tensor]) -> dict[str, Tensor]:
        ids = sample.inputs["input_ids"]
        return {"input_ids": torch.where(mask["tokens"].to(ids.device), torch.full_like(ids, PAD), ids),
                "pixel_values": repaint(sample.inputs["pixel_values"], sample.extra["background"], mask["patches"])}

    def score(self, model: nn.Module, inputs: dict[str, Tensor], target: Tensor) -> Tensor:
        """The similarity logit of each row's own pair, ``logits_per_image[i, i]``."""
        return Similarity().fn(model(**inputs))

    def predict(self, model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
        """1 where the pair matches (similarity logit > 0)."""
        with torch.no_grad():
            return (self.score(model, inputs, None) > 0).long().cpu()

    def explain(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        att = lxt_explain(model, sample.inputs["input_ids"], images=sample.inputs["pixel_values"],
                          target=Similarity(), composite=composite)
        return {"tokens": att.relevance, "patches": att.image_relevance}

    def leaves(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        with torch.no_grad():
            embeds = model.text_model.embeddings.token_embedding(sample.inputs["input_ids"])
        return {"tokens": embeds.detach(), "patches": sample.inputs["pixel_values"].detach()}

    def forward_leaves(self, model: nn.Module, sample: Sample, leaves: dict[str, Tensor]) -> Tensor:
        pixels, embeds = leaves["patches"], leaves["tokens"]
        ids = _repeat(sample.inputs["input_ids"], embeds.shape[0])
        handle = model.text_model.embeddings.token_embedding.register_forward_hook(lambda mod, args, out: embeds)
        try:
            out = model(input_ids=ids, pixel_values=pixels)
        finally:
            handle.remove()
        return out.logits_per_image.diagonal()

    def to_map(self, modality: str, leaf_relevance: Tensor) -> Tensor:
        if modality == "tokens":
            return leaf_relevance.sum(-1)
        return patch_grid(leaf_relevance.sum(1), self.patch)

    def absorption(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        """See :func:`absorption_shares`: ``position`` (vision), ``first`` (the vision CLS token),
        ``text_position``, ``kept``."""
        return absorption_shares(model, self, sample, composite)

    def rollout(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        """Each tower's rollout: the ``<eos>`` row over the caption, the CLS row over the patches."""
        with torch.no_grad(), eager_attention(model):
            text = model.text_model(input_ids=sample.inputs["input_ids"], output_attentions=True)
            vision = model.vision_model(pixel_values=sample.inputs["pixel_values"], output_attentions=True)
        ids = sample.inputs["input_ids"]
        eos = (ids == EOS).int().argmax(-1)
        tj = rollout_rows(text.attentions)
        vj = rollout_rows(vision.attentions)
        return {"tokens": tj[torch.arange(ids.shape[0]), eos].float(),
                "patches": vj[:, 0, 1:].reshape(-1, self.grid, self.grid).float()}

    def train(self, model: nn.Module, *, seed: int = 0, log: Any = print) -> dict[str, float]:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        # training aid, not shipped: a multi-label probe on the image embedding that names every present
        # (colour, shape) pair, so the image tower learns bound codes before the captions can match them
        pairs = len(COLOURS) * len(SHAPES)
        probe = nn.Linear(model.config.projection_dim, pairs)
        opt = torch.optim.AdamW([*model.parameters(), *probe.parameters()], lr=self.lr, weight_decay=0.05)
        warm = self.steps // 20
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, self.steps) / self.steps)))
        held, match = self.pairs(512, seed=999)
        start = time.perf_counter()
        model.train()
        for step in range(self.steps):
            s = self.scenes(self.batch, g)
            pick = torch.randint(0, 1 << 30, (self.batch,), generator=g) % s["active"].sum(1)
            rows = torch.arange(self.batch)
            nc, ns = self.negatives(s, g)
            positive = torch.rand(self.batch, generator=g) < 0.5
            colour = torch.where(positive, s["colours"][rows, pick], nc)
            shape = torch.where(positive, s["shapes"][rows, pick], ns)
            # every (colour, shape) pair once, then the batch's own captions
            every = torch.arange(len(COLOURS) * len(SHAPES))
            colour = torch.cat([every // len(SHAPES), colour])
            shape = torch.cat([every % len(SHAPES), shape])
            rows = torch.arange(colour.shape[0])
            ids, at = captions(colour, shape, g)
            filler = ids >= 2 + len(COLOURS) + len(SHAPES)
            filler &= ids != EOS
            ids = torch.where(filler & (torch.rand(ids.shape, generator=g) < self.dropped), PAD, ids)
            pad = torch.rand(colour.shape[0], generator=g) < self.padded
            which = at + torch.randint(0, 2, (colour.shape[0],), generator=g)
            ids[rows[pad], which[pad]] = PAD
            # every image against every caption: a match where the caption's pair is in the scene
            labels = s["present"][:, colour, shape].float()                     # [images, captions]
            labels[:, pad] = 0.0
            out = model(input_ids=ids, pixel_values=s["pixels"])
            loss = F.binary_cross_entropy_with_logits(out.logits_per_image, labels)
            aid = probe(out.image_embeds * 10.0)
            loss = loss + F.binary_cross_entropy_with_logits(aid, s["present"].reshape(-1, pairs).float())
            clipped_step(loss, model, opt, sched)
            if (step + 1) % self.log_every == 0:
                model.eval()
                acc = float((self.predict(model, held) == match).float().mean())
                model.train()
                log(f"{self.name} step {step + 1}: loss {loss.item():.3f}, held-out pair accuracy {acc:.3f}")
        model.eval()
        acc = float((self.predict(model, held) == match).float().mean())
        return {"steps": float(self.steps), "seconds": time.perf_counter() - start, "accuracy": acc}


register("shapes-vit", ShapesViT)
register("shapes-dinov2", ShapesDinov2)
register("clip-shapes", ClipShapes)
