"""Perturbation experiments: is an attribution faithful to the model it explains?

Flip input tokens most-relevant-first (MoRF) and least-relevant-first (LeRF), track the explained logit,
and compare the areas under the two curves (ABPC = AUC(LeRF) − AUC(MoRF), higher is better), for AttnLRP
and the baselines (gradient, saliency, Input×Gradient, Integrated Gradients, attention rollout, random,
CP-LRP) on shipped offline data (natural-text passages, cloze prompts) or your own JSONL.

    from lxt_fx import evaluate
    rel = evaluate.attribute_many(model, ids, mask, target_ids, positions, ["attnlrp", "ixg"])
    curves = evaluate.compare(model, ids, mask, target_ids, positions, rel)
    curves["attnlrp"].abpc()          # per row

Command line: ``lxt-fx evaluate --model smollm2 --data passages --methods attnlrp,ixg,ig,random --out DIR``.
"""

from .baselines import (
    METHODS,
    UnknownMethodError,
    attribute_many,
    get_method,
    method_names,
    parse_methods,
    register,
)
from .data import (
    ClozeItem,
    DataFormatError,
    EmptyDataError,
    Example,
    Passage,
    encode_cloze,
    encode_passages,
    load,
    load_cloze,
    load_passages,
)
from .perturbation import (
    Curves,
    EvaluationError,
    auc,
    compare,
    mean_se,
    model_scores,
    perturbation_curves,
    step_counts,
)
from .runner import Run, run

__all__ = ["METHODS", "ClozeItem", "Curves", "DataFormatError", "EmptyDataError", "EvaluationError", "Example",
           "Passage", "Run", "UnknownMethodError", "attribute_many", "auc", "compare", "encode_cloze",
           "encode_passages", "get_method", "load", "load_cloze", "load_passages", "mean_se", "method_names",
           "model_scores", "parse_methods", "perturbation_curves", "register", "run", "step_counts"]
