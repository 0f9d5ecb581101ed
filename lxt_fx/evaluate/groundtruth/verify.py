"""Is the planted evidence what the model uses? Ablate it, and ablate as much elsewhere, and compare.

For a sample of held-out rows, :func:`verify_evidence` compares the model's prediction on the intact input
with its prediction when

* the ground truth is removed (``task.ablate(sample, sample.mask)``), and
* an equally large random set is removed: per row and per modality, as many positions as the mask holds
  there, drawn uniformly without replacement from ``region & ~mask`` (where evidence could have been,
  outside the evidence itself).

A task's evidence is verified when the first changes the prediction in ≥ 95 % of rows and the second in
≤ 5 %. Where ``region & ~mask`` has fewer free positions than the mask, all of them are removed and the row
is counted in ``short_rows``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .task import Sample, Task

GT_RATE_MIN = 0.95
RANDOM_RATE_MAX = 0.05


@dataclass
class Evidence:
    """The verification of one task on ``n`` held-out rows (rates are shares of all ``n`` rows)."""

    n: int
    accuracy: float          # prediction == label, intact input
    gt_rate: float           # prediction changed with the ground truth removed
    random_rate: float       # prediction changed with an equally large random set removed
    short_rows: int          # rows whose random set had to be smaller than the mask

    @property
    def verified(self) -> bool:
        return self.gt_rate >= GT_RATE_MIN and self.random_rate <= RANDOM_RATE_MAX

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "verified": self.verified}


def random_control(sample: Sample, seed: int = 0) -> tuple[dict[str, Tensor], int]:
    """Per row and modality, ``|mask|`` positions drawn from ``region & ~mask``; and the rows that fell short."""
    g = torch.Generator().manual_seed(int(seed) + 104729)
    out: dict[str, Tensor] = {}
    short = torch.zeros(len(sample), dtype=torch.bool)
    for key in sorted(sample.mask):
        mask = sample.mask[key].bool().cpu()
        n = mask.shape[0]
        free = (sample.region[key].bool().cpu() & ~mask).reshape(n, -1)
        want = mask.reshape(n, -1).sum(1)
        noise = torch.rand(free.shape, generator=g)
        key_ = torch.where(free, noise, torch.full_like(noise, -1.0))
        order = torch.sort(key_, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(free.shape[1]).expand_as(order).contiguous())
        pick = free & (rank < want[:, None])
        short |= free.sum(1) < want
        out[key] = pick.reshape(mask.shape).to(sample.mask[key].device)
    return out, int(short.sum())


@torch.no_grad()
def verify_evidence(model: nn.Module, task: Task, sample: Sample, seed: int = 0, batch_size: int = 256
                    ) -> Evidence:
    """Prediction-change rates with the ground truth removed and with an equally large random set removed."""
    control, short = random_control(sample, seed)
    same, gt_changed, rnd_changed = [], [], []
    for start in range(0, len(sample), batch_size):
        part = slice(start, start + batch_size)
        rows = sample.rows(part)
        base = task.predict(model, rows.inputs)
        same.append(base.cpu() == rows.target.cpu())
        gt_changed.append(task.predict(model, task.ablate(rows, rows.mask)).cpu() != base.cpu())
        rnd = {k: v[part] for k, v in control.items()}
        rnd_changed.append(task.predict(model, task.ablate(rows, rnd)).cpu() != base.cpu())
    mean = lambda xs: float(torch.cat(xs).double().mean())  # noqa: E731
    return Evidence(len(sample), mean(same), mean(gt_changed), mean(rnd_changed), short)


__all__ = ["GT_RATE_MIN", "RANDOM_RATE_MAX", "Evidence", "random_control", "verify_evidence"]
