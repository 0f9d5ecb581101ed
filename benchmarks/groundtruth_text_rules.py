"""Text ground truth, the rule diagnosis: where each map's positive relevance lies, and candidate rules paired.

    python benchmarks/groundtruth_text_rules.py where TASK [--rows 128] [--model PATH] [--methods attnlrp,cp_lrp,ixg,ig]
    python benchmarks/groundtruth_text_rules.py rules TASK [--rows 128] [--model PATH ...] [--pairs P] [--seed S]
    python benchmarks/groundtruth_text_rules.py train TASK --seeds 1,2,3 --out DIR

``where``: per position category (recall: ``<bos>``, ``<?>``, the query key, the queried key and value, the
other keys and values; trigger-bert: ``[CLS]``, the trigger, the "not", the fillers; copy-t5: the copied
source token, the other source tokens, the decoder start token and prefix) the mean share of each method's
positive relevance per row, and the negative share of ``Σ|R|``. A method is a name of
``groundtruth.methods.METHODS`` or of a composite (``lxt_fx.composites.named``: ``attnlrp`` is then the
generic rules, whatever the model's default).

``rules``: mass and rank accuracy (with ``--abpc`` also the deletion ABPC) of candidate composites
(:data:`CANDIDATES`) on the shipped model and on every ``--model`` (a model of the task trained from another seed with ``task.build(seed)``,
``task.train(model, seed=seed)`` and ``save_pretrained``: held out while the rules were chosen), paired per
row against the generic ``attnlrp``. ``--pairs`` changes a recall task's number of pairs (a held-out variant).
``where`` also takes several ``--model`` folders and prints one table per model.

``train``: the held-out models themselves — ``task.build(seed)`` and ``task.train(model, seed=seed)`` for each
of ``--seeds``, saved to ``DIR/seed<k>`` (``save_pretrained``), with the training accuracy printed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lxt_fx.composites import Composite, attnlrp, cp_lrp, named, router_constant  # noqa: E402
from lxt_fx.composites.patterns import AnyOf  # noqa: E402
from lxt_fx.composites.vision import LINEAR_OPS, input_carries_only  # noqa: E402
from lxt_fx.evaluate import groundtruth as gt  # noqa: E402
from lxt_fx.evaluate.groundtruth.methods import run_methods  # noqa: E402
from lxt_fx.evaluate.groundtruth.text import NOT  # noqa: E402
from lxt_fx.ops import SOFTMAX  # noqa: E402
from lxt_fx.rules import Attention, Gamma, Gradient, Stop  # noqa: E402
from lxt_fx.rules.attention import attention  # noqa: E402

aten = torch.ops.aten


class AttentionSplit(Attention):
    """The fused attention kernel with fixed gradient factors ``(q, k, v)`` (AttnLRP: ``(¼, ¼, ½)``): a
    candidate split of the softmax's relevance between the query and the key side."""

    def __init__(self, scales: tuple[float, float, float]) -> None:
        super().__init__()
        self.scales = scales

    def gxi(self, op, carrying):  # noqa: ANN001, ANN201
        return attention, {"scales": self.scales}


def _split(scales: tuple[float, float, float], name: str) -> Composite:
    return Composite([(aten.scaled_dot_product_attention, AttentionSplit(scales))]).extend(attnlrp, name=name)


def _constant_in(modules: str, name: str) -> Composite:
    """CP-LRP's attention rule (the weights constant: the fused kernel's ``through_weights=False``, an eager
    softmax stopped) in the attention modules whose path matches the glob ``modules``; AttnLRP elsewhere."""
    return Composite([((aten.scaled_dot_product_attention, modules), Attention(through_weights=False)),
                      ((AnyOf(*SOFTMAX), modules), Stop())]).extend(attnlrp, name=name)


CANDIDATES = {
    "attnlrp": attnlrp,
    "cp_lrp": cp_lrp,
    "router_constant": router_constant,
    "gamma0.25": Composite([((LINEAR_OPS, input_carries_only), Gamma(0.25, 1e-6))]).extend(attnlrp,
                                                                                         name="attnlrp+gamma0.25"),
    "tanh_gradient": Composite([(aten.tanh, Gradient())], name="tanh-gradient").extend(attnlrp),
    # the softmax's half of a head's relevance all to the keys (query constant) or all to the query
    "query_constant": _split((0.0, 0.5, 0.5), "attnlrp+query-constant"),
    "key_constant": _split((0.5, 0.0, 0.5), "attnlrp+key-constant"),
    # CP-LRP's attention rule in one kind of T5 attention only, AttnLRP's elsewhere
    "cp_cross": _constant_in("*EncDecAttention*", "attnlrp+cp-cross"),
    "cp_encoder_self": _constant_in("encoder.*SelfAttention*", "attnlrp+cp-encoder-self"),
    "cp_decoder_self": _constant_in("decoder.*SelfAttention*", "attnlrp+cp-decoder-self"),
}


def categories(task: gt.Task, sample: gt.Sample) -> dict[str, dict[str, torch.Tensor]]:
    """modality → {category: boolean [n, L]}."""
    m = sample.mask["tokens"]
    n, length = m.shape
    rows = torch.arange(n)

    def at(cols: torch.Tensor | int | slice) -> torch.Tensor:
        c = torch.zeros(n, length, dtype=torch.bool)
        if isinstance(cols, slice):
            c[:, cols] = True
        else:
            c[rows, cols] = True
        return c

    if task.name.startswith("recall"):
        slot = sample.extra["query_slot"]
        key, value = at(1 + 2 * slot), at(2 + 2 * slot)
        return {"tokens": {"<bos>": at(0), "<?>": at(length - 2), "query key (mask)": at(length - 1),
                           "queried key k_q (mask)": key, "queried value v_q (mask)": value,
                           "other keys": at(slice(1, -2, 2)) & ~key, "other values": at(slice(2, -2, 2)) & ~value}}
    if task.name == "trigger-bert":
        ids = sample.inputs["input_ids"]
        fillers = ~m
        fillers[:, 0] = False
        return {"tokens": {"[CLS]": at(0), "trigger (mask)": m & (ids != NOT), "not (mask)": m & (ids == NOT),
                           "fillers": fillers}}
    if task.name == "copy-t5":
        dec = sample.inputs["decoder_attention_mask"].bool()
        start = torch.zeros_like(dec)
        start[:, 0] = True
        return {"tokens": {"source x_t (mask)": m, "other source": ~m},
                "decoder_tokens": {"decoder start": dec & start, "decoder prefix": dec & ~start}}
    raise SystemExit(f"no position categories for {task.name}")


def shares(maps: dict[str, torch.Tensor], cats: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """category → [n]: its share of the row's positive relevance; plus the negative share of Σ|R|."""
    pos = {k: v.double().clamp_min(0) for k, v in maps.items()}
    total = sum(p.sum(1) for p in pos.values())
    out = {name: (pos[mod] * c).sum(1) / total.clamp_min(1e-30) for mod, cs in cats.items() for name, c in cs.items()}
    neg = sum(v.double().clamp_max(0).abs().sum(1) for v in maps.values())
    out["negative share of Σ|R|"] = neg / (neg + total).clamp_min(1e-30)
    return out


def maps_of(model: torch.nn.Module, task: gt.Task, sample: gt.Sample, method: str, chunk: int = 64
            ) -> dict[str, torch.Tensor]:
    composite = CANDIDATES.get(method) or named().get(method)
    if composite is None:
        return run_methods(model, task, sample, [method], batch_size=chunk)[method]
    parts = [task.explain(model, sample.rows(slice(i, i + chunk)), composite=composite)
             for i in range(0, len(sample), chunk)]
    return {k: torch.cat([p[k].detach().float() for p in parts]) for k in sample.mask}


def load(task_name: str, path: str | None) -> tuple[torch.nn.Module, gt.Task]:
    model, task = gt.load(task_name)
    if path:
        model = type(model).from_pretrained(path).eval()
    return model, task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["where", "rules", "train"])
    p.add_argument("task")
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--model", action="append", default=[], help="a held-out model folder (save_pretrained)")
    p.add_argument("--methods", default="attnlrp,cp_lrp,ixg,ig")
    p.add_argument("--candidates", default="attnlrp,cp_lrp,gamma0.25,tanh_gradient")
    p.add_argument("--pairs", type=int, default=0, help="recall tasks: the number of pairs (a held-out variant)")
    p.add_argument("--abpc", action="store_true", help="rules: also the paired deletion ABPC (Task.ablate)")
    p.add_argument("--seeds", default="1,2", help="train: the training seeds")
    p.add_argument("--out", default="heldout", help="train: the folder that gets one model per seed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.what == "train":
        task = gt.get(args.task)
        for seed in (int(s) for s in args.seeds.split(",")):
            model = task.build(seed)
            stats = task.train(model, seed=seed, log=lambda *a, **k: None)
            model.save_pretrained(Path(args.out) / f"seed{seed}")
            print(f"{args.task} seed {seed}: {stats}", flush=True)
        return 0
    paths = (args.model or [None]) if args.what == "where" else [None, *args.model]
    for path in paths:
        model, task = load(args.task, path)
        if args.pairs:
            task.pairs = args.pairs
        sample = task.sample(args.rows, seed=args.seed)
        names = (args.methods if args.what == "where" else args.candidates).split(",")
        maps = {k: maps_of(model, task, sample, k) for k in names}
        scores = {k: gt.score(v, sample.mask) for k, v in maps.items()}
        mass = {k: v["mass"].double() for k, v in scores.items()}
        print(f"\n### {args.task} ({path or 'shipped model'}; {args.rows} rows, seed {args.seed}"
              f"{f', {args.pairs} pairs' if args.pairs else ''})\n")
        if args.what == "where":
            table = {k: shares(v, categories(task, sample)) for k, v in maps.items()}
            print("| position | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
            for c in table[names[0]]:
                print(f"| {c} | " + " | ".join(f"{float(table[k][c].mean()):.3f}" for k in names) + " |")
            print("| mass | " + " | ".join(f"{float(mass[k].mean()):.3f}" for k in names) + " |")
        else:
            metrics = {"mass": mass, "rank": {k: v["rank"].double() for k, v in scores.items()}}
            if args.abpc:
                metrics["ABPC"] = {k: torch.cat([gt.deletion_abpc(model, task, sample.rows(slice(i, i + 128)),
                                                                   {m: r[i:i + 128] for m, r in v.items()})
                                                 for i in range(0, len(sample), 128)]).double()
                                   for k, v in maps.items()}
            print("| composite | " + " | ".join(f"{m} | paired − attnlrp" for m in metrics) + " |\n|---|"
                  + "---|---|" * len(metrics))
            se = math.sqrt(args.rows)
            for k in maps:
                cells = []
                for per in metrics.values():
                    v, d = per[k], per[k] - per.get("attnlrp", per[names[0]])
                    cells.append(f"{float(v.mean()):.3f} ± {float(v.std() / se):.3f} | "
                                 f"{float(d.mean()):+.3f} ± {float(d.std() / se):.3f}")
                print(f"| {k} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
