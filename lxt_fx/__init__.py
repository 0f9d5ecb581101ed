"""lxt-fx: AttnLRP for any HuggingFace transformer, by rewriting its captured torch.fx graph.

``explain(model, "text", tokenizer=tok)`` gives relevance per input token in one backward pass;
``attnlrp.context(model)`` routes ordinary model calls through the rewritten graph.
"""

from . import composites, rules, targets, tracing
from .attribution import Attribution
from .composites import Composite, attnlrp, cp_lrp
from .explain import InputError, explain
from .rewrite import RewriteReport, UnhandledOpError
from .session import DtypeError, NoInputEmbeddingsError, NotAModuleError
from .targets import Contrastive, LogProb, TargetError
from .tracing import CaptureError, LXTError

__version__ = "0.1.0"

__all__ = ["Attribution", "CaptureError", "Composite", "Contrastive", "DtypeError", "InputError", "LXTError",
           "LogProb", "NoInputEmbeddingsError", "NotAModuleError", "RewriteReport", "TargetError",
           "UnhandledOpError", "attnlrp", "composites", "cp_lrp", "explain", "rules", "targets", "tracing"]
