"""Feature visualization and latent attribution: which neurons and heads decide, and what they mean.

Built on the latent relevance ``x ⊙ grad`` that ``explain(..., capture=[...])`` records in the same backward:

* :mod:`.places` — a place is a module path (its output channels) or ``"<path>:input"`` (its input channels);
* :func:`neurons` — the top-k neurons of a place by relevance, with their activation;
* :func:`heads` — relevance per attention head ``[layers, heads]`` from one backward;
* :func:`conditional` — the input relevance that flows through chosen neurons only (many concepts batched);
* :func:`ablate` — knock out or scale neurons in every forward, reversibly;
* :func:`patching` / :func:`activation_patching` — RelP and AtP scores of components (heads, MLPs, neurons,
  the residual stream per position) against the activation-patching ground truth;
* :func:`attention_gradient` — AttnLRP without its attention rule, a RelP variant closer to activation
  patching on MLP outputs;
* :func:`attribution_graph` — the top components and the relevance flowing between them (networkx, JSON, HTML);
* :class:`FeatureIndex` / :func:`build_index` — reference snippets per neuron over a corpus; :mod:`.card`.
"""

from .ablate import ablate
from .card import NeuronCard
from .circuit import CircuitGraph, attribution_graph
from .components import Component, find_components
from .conditional import conditional
from .heads import heads
from .index import FeatureIndex, IndexMismatchError, Snippet, build_index
from .neurons import Neuron, neurons, per_neuron
from .patching import LengthMismatchError, Patching, activation_patching, patching
from .places import AttentionPlace, PlaceError, attention_places, graph_for
from .relp_variants import attention_gradient

__all__ = ["AttentionPlace", "CircuitGraph", "Component", "FeatureIndex", "IndexMismatchError", "LengthMismatchError", "Neuron",
           "NeuronCard", "Patching", "PlaceError", "Snippet", "ablate", "activation_patching", "attention_gradient", "attention_places", "attribution_graph",
           "build_index", "conditional", "find_components", "graph_for", "heads", "neurons", "patching",
           "per_neuron"]
