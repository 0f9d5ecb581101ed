"""Ground-truth evaluation: small models trained here on tasks whose evidence is planted, scored against masks.

    from lxt_fx.evaluate import groundtruth as gt
    gt.tasks()                                   # the task names, one (or more) per family
    model, task = gt.load("recall-llama")        # the shipped trained weights
    sample = task.sample(64, seed=1)             # inputs, labels, masks shaped like the relevance maps
    maps = task.explain(model, sample)           # AttnLRP relevance per modality
    gt.score(maps, sample.mask)                  # {"mass", "rank", "pointing"} per row

Each task's evidence is verified on its model (:func:`verify_evidence`): removing the ground truth changes
the prediction almost always, removing an equally large random set outside it almost never.
"""

from .catalog import MissingWeightsError, get, load, save, tasks
from .methods import METHODS, deletion_abpc, methods_for, run_method, run_methods
from .registry import UnknownTaskError, register
from .scores import MaskShapeError, mass_accuracy, pointing_game, rank_accuracy, score
from .task import WEIGHTS, Sample, Task
from .verify import Evidence, verify_evidence

__all__ = ["METHODS", "WEIGHTS", "Evidence", "MaskShapeError", "MissingWeightsError", "Sample", "Task", "UnknownTaskError", "get", "load",
           "mass_accuracy", "pointing_game", "rank_accuracy", "register", "save", "score", "tasks"]
__all__ += ["deletion_abpc", "methods_for", "run_method", "run_methods", "verify_evidence"]
