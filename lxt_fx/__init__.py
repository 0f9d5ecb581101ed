"""lxt-fx: AttnLRP for any HuggingFace transformer, by rewriting its captured torch.fx graph.

``explain(model, "text", tokenizer=tok)`` gives relevance per input token in one backward pass;
``attnlrp.context(model)`` routes ordinary model calls through the rewritten graph;
``check(model, inputs)`` proves coverage, rule opacity, conservation and finiteness for one input.
"""

# ``lxt_fx.check`` is the package of the checks and, called, ``check(model, inputs)`` (see lxt_fx/check).
from . import check, composites, rules, targets, tracing
from .attribution import Attribution
from .composites import Composite, attnlrp, cp_lrp
from .explain import InputError, NoParametersError, explain
from .generation import GenerationAttribution, explain_generation
from .rewrite import RewriteReport, UnhandledOpError
from .session import (
    DtypeError,
    ExampleInputsError,
    NoInputEmbeddingsError,
    NoRelevancePathError,
    NotAModuleError,
    RelevanceInputError,
    UnsupportedCallError,
)
from .taps import CaptureNameError
from .targets import Contrastive, LogProb, TargetError
from .tracing import CaptureError, LXTError

__version__ = "0.1.0"

__all__ = ["Attribution", "CaptureError", "CaptureNameError", "Composite", "Contrastive", "DtypeError",
           "ExampleInputsError", "InputError", "LXTError", "LogProb", "NoInputEmbeddingsError", "NoParametersError",
           "NoRelevancePathError", "NotAModuleError", "RelevanceInputError", "RewriteReport", "TargetError",
           "UnhandledOpError", "UnsupportedCallError", "attnlrp", "check", "composites", "cp_lrp", "explain",
           "rules", "targets", "tracing"]
__all__ += ["GenerationAttribution", "explain_generation"]
