"""What a ground-truth task is: planted evidence, a model trained to use it, and a mask of where it lies.

A task draws examples whose label depends on evidence placed at random positions among distractors from
the same distribution; :class:`Sample` carries the model's inputs, the label and, per modality, a boolean
mask with the shape of that modality's relevance map (``"tokens"`` ``[n, L]``, ``"decoder_tokens"``
``[n, L']``, ``"patches"`` ``[n, h, w]``, ``"frames"`` ``[n, T]``). The explained scalar of a row is
:meth:`Task.score` — the logit of the label — so every method explains the same number.

Gradient-based methods work on the task's *leaves*: the continuous tensor each modality's relevance is
read at (token embeddings, pixel values, audio features). :meth:`Task.leaves` builds them,
:meth:`Task.forward_leaves` runs the model from them, and :meth:`Task.to_map` reduces a leaf-shaped
relevance (e.g. input × gradient) to the modality's map.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

WEIGHTS = Path(__file__).parent / "weights"


@dataclass
class Sample:
    """``n`` examples: the model's keyword inputs, the label per row, the ground-truth mask per modality.

    ``region`` (same layout as ``mask``) marks where evidence *could* have been placed — the evidence and
    its distractors, not the fixed scaffolding such as a query token, a [CLS] token or a prompt. The random
    control of :func:`~lxt_fx.evaluate.groundtruth.verify_evidence` removes positions drawn from
    ``region & ~mask``. The scores use the whole map.
    """

    inputs: dict[str, Tensor]
    target: Tensor
    mask: dict[str, Tensor]
    region: dict[str, Tensor]
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def rows(self, index: slice | Tensor) -> Sample:
        """The rows ``index`` of every tensor (inputs, target, masks, and the per-row tensors of ``extra``:
        those whose first dimension is the row count; anything else in ``extra`` is kept as it is)."""
        pick = (lambda t: t[index]) if isinstance(index, slice) else (lambda t: t.index_select(0, index))
        n = len(self)
        extra = {k: pick(v) if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n else v
                 for k, v in self.extra.items()}
        return Sample({k: pick(v) for k, v in self.inputs.items()}, pick(self.target),
                      {k: pick(v) for k, v in self.mask.items()}, {k: pick(v) for k, v in self.region.items()},
                      extra)


class Task(abc.ABC):
    """One family's task. Subclasses set ``name``, ``family``, ``modalities`` and implement the methods."""

    name: str
    family: str                      # the architecture the model is shaped like: "llama", "vit", "whisper" …
    description: str = ""
    modalities: tuple[str, ...] = ("tokens",)
    has_attention_rollout: bool = False   # True where ``rollout`` can read the model's attention probabilities

    # --- the model ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def build(self, seed: int = 0) -> nn.Module:
        """A freshly initialised model of the task's fixed configuration (eval mode)."""

    @abc.abstractmethod
    def train(self, model: nn.Module, *, seed: int = 0, log: Any = print) -> dict[str, float]:
        """Train ``model`` in place from fixed seeds; return ``{"steps", "seconds", "accuracy"}``; leave eval mode."""

    # --- the data -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def sample(self, n: int, seed: int) -> Sample:
        """``n`` held-out examples drawn from ``seed``; the same seed gives the same examples."""

    @abc.abstractmethod
    def ablate(self, sample: Sample, mask: dict[str, Tensor]) -> dict[str, Tensor]:
        """``sample.inputs`` with the positions in ``mask`` (same layout as ``sample.mask``) removed or
        replaced by task-neutral filler (e.g. a pad token, background pixels, silence)."""

    # --- what is explained ----------------------------------------------------------------------------
    @abc.abstractmethod
    def score(self, model: nn.Module, inputs: dict[str, Tensor], target: Tensor) -> Tensor:
        """``[n]``: the explained scalar per row (the label's logit)."""

    def predict(self, model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
        """``[n]``: the model's predicted label per row."""
        raise NotImplementedError

    @abc.abstractmethod
    def explain(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        """LRP relevance per modality (maps shaped like ``sample.mask``) through ``lxt_fx.explain`` with
        ``composite`` (``None``: the model's default) and a target that picks :meth:`score`."""

    # --- gradient methods -----------------------------------------------------------------------------
    @abc.abstractmethod
    def leaves(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        """Modality → the continuous input its relevance is read at (detached)."""

    @abc.abstractmethod
    def forward_leaves(self, model: nn.Module, sample: Sample, leaves: dict[str, Tensor]) -> Tensor:
        """``[n]``: :meth:`score` computed from ``leaves`` in place of the discrete / raw inputs."""

    @abc.abstractmethod
    def to_map(self, modality: str, leaf_relevance: Tensor) -> Tensor:
        """A leaf-shaped relevance (summed appropriately) → the modality's map, shaped like the mask."""

    def rollout(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        """Attention rollout maps, where the task defines it."""
        raise NotImplementedError(f"{self.name}: no attention rollout")

    def absorption(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        """``{share name: [n]}``: where the AttnLRP relevance of each row goes besides the maps — e.g.
        ``"position"`` (learned / absolute position embeddings added into the residual stream), ``"first"``
        (the first token: a sink, BOS or [CLS]), ``"kept"`` (the maps' sum over the explained score). Tasks
        that define none return ``{}``."""
        return {}

    # --- shipped weights ------------------------------------------------------------------------------
    @property
    def weights_dir(self) -> Path:
        return WEIGHTS / self.name


def clipped_step(loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any) -> None:
    """One training step: gradients of ``loss`` (the old ones cleared), their global norm clipped to 1, the
    optimizer's step, then the schedule's."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()


def fit_one_cycle(model: nn.Module, steps: int, lr: float, batch_loss: Callable[[], Tensor], *, log: Any = print,
                  name: str = "") -> float:
    """Train ``model`` for ``steps`` AdamW steps (weight decay 0.01) on ``batch_loss()`` — which draws a fresh
    batch and returns its loss — under a one-cycle schedule peaking at ``lr`` (10 % warm-up; a constant
    ``lr`` for 20 steps or fewer); leaves the model in eval mode and returns the seconds spent."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1,
                                                three_phase=False) if steps > 20 else None
    begin = time.perf_counter()
    for step in range(steps):
        loss = batch_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  {name} step {step}: loss {loss.item():.3f}")
    model.eval()
    return time.perf_counter() - begin
