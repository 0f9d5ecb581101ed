"""``Composite``: an ordered list of (pattern → rule); the first entry that fits a node decides its rule."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor, fx, nn

from ..rules.base import Rule
from ..tracing.meta import module_path
from .patterns import Matcher, NodeInfo, compile_pattern, describe

if TYPE_CHECKING:
    from ..rewrite import RewriteReport


class Composite:
    """An ordered map from graph patterns to LRP rules.

    An entry fits a node when its pattern matches, its rule knows the node's op (``rule.supports``) and
    the rule applies to the node's relevance-carrying inputs (``rule.applies``: e.g. the uniform rule needs
    two or more). Entries are tried in order; composites combine with :meth:`extend` or ``|`` (the left
    one's entries first).
    """

    def __init__(self, entries: Iterable[tuple[Any, Rule | None]] = (), name: str = "custom") -> None:
        self.name = name
        self.entries: tuple[tuple[Any, Rule | None], ...] = tuple(entries)
        for _, rule in self.entries:
            if rule is not None and not isinstance(rule, Rule):
                raise TypeError(f"composite {name!r}: {rule!r} is not an lxt_fx Rule "
                                "(use one from lxt_fx.rules, or None to leave an op as it is)")
        self._matchers: tuple[Matcher, ...] = tuple(compile_pattern(p) for p, _ in self.entries)

    def decide(self, node: fx.Node, info: NodeInfo) -> tuple[Rule | None, int | None]:
        """(rule, entry index) for ``node``; (None, index) when an entry maps it to None; (None, None)
        when no entry fits."""
        for index, ((_, rule), match) in enumerate(zip(self.entries, self._matchers, strict=True)):
            if rule is not None and (rule.region or not (rule.supports(node.target)
                                                         and rule.applies(info.carrying, node.target))):
                continue
            if match(node, info):
                return rule, index
        return None, None

    def region_members(self, nodes: Iterable[fx.Node], info: NodeInfo) -> list[tuple[Rule, list[fx.Node]]]:
        """For each region rule, the ``call_function`` nodes its pattern matches, grouped by module path."""
        found: list[tuple[Rule, list[fx.Node]]] = []
        nodes = [n for n in nodes if n.op == "call_function"]
        for (_, rule), match in zip(self.entries, self._matchers, strict=True):
            if rule is None or not rule.region:
                continue
            groups: dict[str, list[fx.Node]] = {}
            for node in nodes:
                if match(node, info):
                    groups.setdefault(module_path(node), []).append(node)
            found.extend((rule, members) for members in groups.values())
        return found

    def extend(self, other: Composite | Iterable[tuple[Any, Rule | None]], name: str | None = None) -> Composite:
        """A new composite: this one's entries, then ``other``'s."""
        more = other.entries if isinstance(other, Composite) else tuple(other)
        other_name = other.name if isinstance(other, Composite) else "custom"
        return Composite(self.entries + more, name or f"{self.name}|{other_name}")

    def __or__(self, other: Composite) -> Composite:
        return self.extend(other)

    def describe(self) -> list[tuple[str, str]]:
        """(pattern, rule) as text, in order."""
        return [(describe(p), repr(r)) for p, r in self.entries]

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, {len(self.entries)} entries)"

    def rewrite(self, model: nn.Module, example_inputs: Mapping[str, Any] | Sequence[Any] | Tensor,
                strict: bool = False, relevance_inputs: Sequence[str] | None = None
                ) -> tuple[fx.GraphModule, RewriteReport]:
        """Capture ``model`` for ``example_inputs`` (cached) and return the rewritten graph and its report.

        ``example_inputs``: the keyword arguments of a call (``input_ids`` or ``inputs_embeds``,
        ``attention_mask``, …), or positional ones as a tuple (or one tensor), bound to ``model.forward``.
        ``relevance_inputs``: the inputs relevance is read at; default every floating-point tensor input whose
        name has no ``mask``/``position``/``cache`` in it (``input_ids`` stand for their embeddings). Nothing
        reaching an output from them is a :class:`~lxt_fx.session.NoRelevancePathError`."""
        from ..session import rewritten

        return rewritten(model, self, example_inputs, strict=strict, relevance_inputs=relevance_inputs)

    def context(self, model: nn.Module, strict: bool = False, checkpoint: str | None = None,
                relevance_inputs: Sequence[str] | None = None) -> CompositeContext:
        """Inside, calling ``model(...)`` runs the rewritten graph; on exit — also after an exception —
        the model is exactly as it came in (its ``forward`` and every attribute).

        ``checkpoint``: None, ``"layer"`` or ``"sqrt"`` — gradient checkpointing inside the rewritten graph
        (:mod:`lxt_fx.checkpoint`), in eval mode, with unchanged relevance. ``relevance_inputs``: as in
        :meth:`rewrite`. A call the graph cannot represent (a key/value cache, ``use_cache=True``) runs the
        untouched forward under ``torch.no_grad()`` / ``inference_mode`` (so ``model.generate`` gives the
        same tokens) and raises :class:`~lxt_fx.session.UnsupportedCallError` with gradients enabled.
        Contexts on one model may nest and exit in any order (see :func:`lxt_fx.session.patched_forward`).
        The returned object can be entered again after it was left, and inside itself (each ``with`` is one
        context on the model)."""
        return CompositeContext(self, model, strict, checkpoint, relevance_inputs)


class CompositeContext:
    """What :meth:`Composite.context` returns: a context manager that can be entered any number of times, one
    after another or nested; each ``with`` routes ``model(...)`` through the rewritten graph until it is left."""

    def __init__(self, composite: Composite, model: nn.Module, strict: bool, checkpoint: str | None,
                 relevance_inputs: Sequence[str] | None) -> None:
        self.composite, self.model = composite, model
        self.strict, self.checkpoint, self.relevance_inputs = strict, checkpoint, relevance_inputs
        self._entered: list[contextlib.AbstractContextManager[nn.Module]] = []

    def __enter__(self) -> nn.Module:
        from ..session import patched_forward

        entry = patched_forward(self.model, self.composite, strict=self.strict, checkpoint=self.checkpoint,
                                relevance_inputs=self.relevance_inputs)
        model = entry.__enter__()
        self._entered.append(entry)
        return model

    def __exit__(self, *exc: Any) -> bool | None:
        return self._entered.pop().__exit__(*exc)

    def __repr__(self) -> str:
        return f"{self.composite.name}.context({type(self.model).__name__}, entered {len(self._entered)}×)"
