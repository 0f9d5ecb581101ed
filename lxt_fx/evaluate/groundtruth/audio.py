"""tones-whisper: a Whisper-shaped speech model names the pitch of the one rising chirp among other sounds.

The input is a log-mel-like spectrogram ``[n, 16 mel bins, 64 frames]``: background noise and five sound
events of six frames each at random, non-overlapping times. Every event is a tone whose bin moves in steps
of one every two frames — up (a *rising chirp*), down (a falling chirp) or not at all (a steady tone) — and
starts at one of eight pitches (bins 4…11). Exactly one event is a rising chirp; the other four are falling
chirps or steady tones at random pitches other than the rising chirp's, so removing the rising chirp leaves
no trace of the answer. The model, a :class:`~transformers.WhisperForConditionalGeneration`, gets the
decoder start token and decodes one token: the rising chirp's starting pitch (``p0`` … ``p7``), or "none"
— a tenth of the training rows hold no rising chirp, so that a spectrogram without one has an answer of its
own rather than a guess (the held-out examples always hold one). The label is
thus set by a binding — the pitch of the event with the rising shape — not by the presence of any pitch or
shape: pitches and bins occur in every distractor, and a pitch alone says nothing.

Ground truth: the rising chirp's six input frames (mask ``"frames"`` ``[n, 64]``). Every frame is a place
where evidence could have been (``region`` all true). Ablation sets frames to silence (0, the noise mean).
The explained scalar is the logit of the label token at the decoder's first step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .registry import register
from .task import Sample, Task, fit_one_cycle

MEL, FRAMES, EVENT, EVENTS, PITCHES, LOWEST = 16, 64, 6, 5, 8, 4
PAD, START, EOS = 0, 1, 2
FIRST_LABEL = 3          # token id of pitch 0; FIRST_LABEL + PITCHES: "none"
ABSENT = 0.1             # the share of training rows without a rising chirp
NOISE, LOUD = 0.2, 1.5   # background noise std, event level above it


def _place(n: int, generator: torch.Generator) -> Tensor:
    """``[n, EVENTS]`` start frames of non-overlapping events (random gaps, random order)."""
    slack = FRAMES - EVENTS * EVENT
    # a random composition of the slack into EVENTS + 1 gaps: sorted uniform cut points
    cuts = torch.sort(torch.randint(0, slack + 1, (n, EVENTS), generator=generator), dim=1).values
    return cuts + torch.arange(EVENTS) * EVENT


def draw(n: int, generator: torch.Generator, absent: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """``(features [n, MEL, FRAMES], label [n], ground truth [n, FRAMES] bool)``: the label is the rising
    chirp's pitch (0 … 7), or ``PITCHES`` ("none") in the share ``absent`` of rows drawn without one (their
    fifth event a distractor, their mask empty)."""
    starts = _place(n, generator)
    which = torch.randint(0, EVENTS, (n,), generator=generator)              # the rising chirp's slot
    pitch = torch.randint(0, PITCHES, (n,), generator=generator)
    # distractor pitches: uniform over the seven others
    other = torch.randint(0, PITCHES - 1, (n, EVENTS), generator=generator)
    other = other + (other >= pitch[:, None]).long()
    shape = torch.randint(0, 2, (n, EVENTS), generator=generator) - 1         # −1 falling, 0 steady
    rows = torch.arange(n)
    none = torch.rand(n, generator=generator) < absent
    other[rows, which] = pitch
    shape[rows, which] = torch.where(none, shape[rows, which], 1)
    x = NOISE * torch.randn(n, MEL, FRAMES, generator=generator)
    mask = torch.zeros(n, FRAMES, dtype=torch.bool)
    step = torch.arange(EVENT) // 2
    for e in range(EVENTS):
        frames = starts[:, e:e + 1] + torch.arange(EVENT)                      # [n, EVENT]
        bins = LOWEST + other[:, e:e + 1] + shape[:, e:e + 1] * step            # [n, EVENT]
        x[rows[:, None], bins, frames] += LOUD
        hit = (e == which) & ~none
        mask[rows[hit][:, None], frames[hit]] = True
    return x, torch.where(none, PITCHES, pitch), mask


class TonesWhisper(Task):
    """The rising chirp's pitch, decoded by a tiny Whisper (see the module docstring)."""

    name = "tones-whisper"
    family = "whisper"
    description = ("Whisper decodes the starting pitch of the one rising chirp among falling chirps and steady "
                   "tones at random times; ground truth: the chirp's frames")
    modalities = ("frames",)
    has_attention_rollout = True

    def build(self, seed: int = 0) -> nn.Module:
        import transformers as tf

        torch.manual_seed(seed)
        cfg = tf.WhisperConfig(vocab_size=FIRST_LABEL + PITCHES + 1, d_model=64, encoder_layers=2, decoder_layers=1,
                               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                               decoder_ffn_dim=128, num_mel_bins=MEL, max_source_positions=FRAMES // 2,
                               max_target_positions=8, decoder_start_token_id=START, pad_token_id=PAD,
                               eos_token_id=EOS, bos_token_id=START, begin_suppress_tokens=None,
                               suppress_tokens=None, attn_implementation="eager")
        return tf.WhisperForConditionalGeneration(cfg).eval()

    # --- data -----------------------------------------------------------------------------------------
    def _inputs(self, features: Tensor) -> dict[str, Tensor]:
        return {"input_features": features, "decoder_input_ids": torch.full((features.shape[0], 1), START)}

    def sample(self, n: int, seed: int) -> Sample:
        x, pitch, mask = draw(n, torch.Generator().manual_seed(seed))
        return Sample(self._inputs(x), pitch + FIRST_LABEL, {"frames": mask},
                      {"frames": torch.ones_like(mask)})

    def ablate(self, sample: Sample, mask: dict[str, Tensor]) -> dict[str, Tensor]:
        x = sample.inputs["input_features"].masked_fill(mask["frames"][:, None, :], 0.0)
        return {**sample.inputs, "input_features": x}

    # --- scores ---------------------------------------------------------------------------------------
    def score(self, model: nn.Module, inputs: dict[str, Tensor], target: Tensor) -> Tensor:
        logits = model(**inputs).logits[:, -1]
        return logits.gather(1, target[:, None]).squeeze(1)

    def predict(self, model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            return model(**inputs).logits[:, -1].argmax(-1)

    def train(self, model: nn.Module, *, seed: int = 0, log: Any = print, steps: int = 1500,
              batch: int = 64) -> dict[str, float]:
        generator = torch.Generator().manual_seed(1000 + seed)
        torch.manual_seed(seed)

        def batch_loss() -> Tensor:
            x, pitch, _ = draw(batch, generator, ABSENT)
            logits = model(**self._inputs(x)).logits[:, -1]
            return nn.functional.cross_entropy(logits, pitch + FIRST_LABEL)

        seconds = fit_one_cycle(model, steps, 2e-3, batch_loss, log=log, name=self.name)
        held = self.sample(512, seed=10_000 + seed)
        accuracy = float((self.predict(model, held.inputs) == held.target).double().mean())
        return {"steps": steps, "seconds": seconds, "accuracy": accuracy}

    # --- LRP --------------------------------------------------------------------------------------------
    def explain(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        from ...explain import explain

        att = explain(model, sample.inputs["decoder_input_ids"], audio=sample.inputs["input_features"],
                             target=sample.target.tolist(), composite=composite)
        return {"frames": att.audio_relevance.detach().float()}

    def absorption(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        """AttnLRP's shares per row from one ``explain``: ``"first"`` — the decoder start token's ``|R|`` over
        ``|R|`` of it and every frame (the decoder's only token, where a sink would show); ``"kept"`` — the
        frames' and the decoder token's relevance summed, over the explained logit. The encoder's sinusoidal
        positions are added after the convolutions, past the leaves, so what they absorb is in
        ``1 − kept`` with the biases and the softmax rule's bias term (``lxt_fx.check`` splits it by cause)."""
        from ...explain import explain

        att = explain(model, sample.inputs["decoder_input_ids"], audio=sample.inputs["input_features"],
                      target=sample.target.tolist(), composite=composite)
        frames, decoder = att.audio_relevance.double(), att.relevance.double().sum(1)
        total = decoder.abs() + frames.abs().sum(1)
        return {"first": decoder.abs() / total.clamp_min(1e-30),
                "kept": (decoder + frames.sum(1)) / att.target_scores.double()}

    # --- gradient methods -------------------------------------------------------------------------------
    def leaves(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        return {"frames": sample.inputs["input_features"].detach().clone()}

    def forward_leaves(self, model: nn.Module, sample: Sample, leaves: dict[str, Tensor]) -> Tensor:
        x = leaves["frames"]
        reps = x.shape[0] // len(sample)   # Captum may stack several copies of the batch
        target = sample.target.repeat(reps)
        return self.score(model, self._inputs(x), target)

    def to_map(self, modality: str, leaf_relevance: Tensor) -> Tensor:
        return leaf_relevance.sum(1)

    def rollout(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        """Attention rollout (Abnar & Zuidema 2020) through the encoder, read by the decoder's cross-attention.

        Encoder: ``Â_l = ½(mean_heads A_l + I)``, rows renormalised, ``R = Â_L ⋯ Â_1``; the decoder's
        last-layer cross-attention of its explained position (mean over heads) ``c`` weights the encoder
        positions, so the map over encoder positions is ``c R``; each encoder position covers two input frames
        (the stride-2 convolution), which share its value."""
        with _eager(model), torch.no_grad():
            out = model(**sample.inputs, output_attentions=True)
        enc = out.encoder_attentions
        positions = enc[0].shape[-1]
        roll = torch.eye(positions).expand(enc[0].shape[0], -1, -1)
        for attn in enc:
            a = 0.5 * (attn.mean(1) + torch.eye(positions))
            a = a / a.sum(-1, keepdim=True)
            roll = a @ roll
        cross = out.cross_attentions[-1].mean(1)[:, -1]                    # [n, positions]
        per_position = (cross[:, None, :] @ roll).squeeze(1)
        return {"frames": per_position.repeat_interleave(FRAMES // positions, dim=1).float()}


@contextlib.contextmanager
def _eager(model: nn.Module) -> Iterator[None]:
    """Eager attention (which returns its probabilities) for the duration, the model's own setting after."""
    configs = [m.config for m in model.modules() if hasattr(m, "config")]
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = "eager"
        yield
    finally:
        for c, b in zip(configs, before, strict=True):
            c._attn_implementation = b


register(TonesWhisper.name, TonesWhisper)
