"""``check``: does my LXT implementation make sense? Coverage, conservation, provenance, opacity.

``lxt_fx.check(model, inputs)`` rewrites ``model`` as ``explain`` would, then proves or measures:

* **coverage** (:mod:`.coverage`): every ``call_function`` node classified as rule / linear / selection /
  off-path / UNHANDLED, with module path and source line;
* **rule opacity** (:mod:`.opacity`): every decided rule is a rule call in the recompiled code;
* **conservation** (:mod:`.conservation`): relevance sums at every block boundary and per-node losses by
  cause, from one forward and one backward through a tapped copy of the graph (:mod:`.latent`); and again
  in zero-bias mode (biases and ε zeroed in another copy);
* **provenance** (:mod:`.provenance`): the first non-finite value, gradient or relevance.

The model is never changed: the taps and the zero-bias edits live in fresh copies of the captured graph,
which share the parameters read-only; gradients are taken with ``torch.autograd.grad`` (no ``.grad`` is
written). Everything lands in a :class:`CheckReport`.
"""

import sys

from ..taps import LatentPass, latent_pass
from .report import CheckReport, GraphNode
from .run import CallablePackage, check

__all__ = ["CheckReport", "GraphNode", "LatentPass", "check", "latent_pass"]

sys.modules[__name__].__class__ = CallablePackage  # lxt_fx.check(model, inputs) calls check
