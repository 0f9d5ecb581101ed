"""Input constraints of a capture as data (lxt_fx.tracing.guards): they reject exactly the inputs that torch's
own checks on ``ExportedProgram.module()`` reject (the independent reference), and survive JSON."""

from __future__ import annotations

import pytest
import torch

from lxt_fx.tracing.guards import InputSpec, spec_of


class _Masked(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.proj(tensors["inputs_embeds"]) * tensors["attention_mask"][..., None]
        return x * 2 if x.shape[1] > 4 else x


CASES = {
    "admitted": (torch.randn(3, 7, 4), torch.ones(3, 7)),
    "too short": (torch.randn(2, 3, 4), torch.ones(2, 3)),
    "lengths differ": (torch.randn(2, 6, 4), torch.ones(2, 7)),
    "hidden size": (torch.randn(2, 6, 5), torch.ones(2, 6)),
    "dtype": (torch.randn(2, 6, 4).double(), torch.ones(2, 6)),
}


@pytest.fixture(scope="module")
def program() -> torch.export.ExportedProgram:
    batch, seq = torch.export.Dim.AUTO, torch.export.Dim.AUTO
    example = {"inputs_embeds": torch.randn(2, 6, 4), "attention_mask": torch.ones(2, 6)}
    return torch.export.export(_Masked(), (example,), strict=False,
                               dynamic_shapes=({"inputs_embeds": {0: batch, 1: seq},
                                                "attention_mask": {0: batch, 1: seq}},))


@pytest.mark.parametrize("case", list(CASES))
def test_spec_rejects_what_the_exported_module_rejects(program, case) -> None:
    spec = spec_of(program)
    assert InputSpec.from_json(spec.to_json()) == spec
    embeds, mask = CASES[case]
    tensors = {"inputs_embeds": embeds, "attention_mask": mask}
    try:
        program.module()(tensors)
        torch_rejects = False
    except (RuntimeError, AssertionError, ValueError):
        torch_rejects = True
    why = spec.violation(tensors)
    assert (why is not None) == torch_rejects == (case != "admitted"), why


def test_spec_messages_and_expressions() -> None:
    spec = InputSpec({"a": ("float32", ("s0", "2*s0")), "b": ("int64", ("s0",))}, {"s0": (1, 8)})
    assert spec.violation({"a": torch.zeros(3, 6), "b": torch.zeros(3, dtype=torch.long)}) is None
    assert "2*s0 = 6" in spec.violation({"a": torch.zeros(3, 5), "b": torch.zeros(3, dtype=torch.long)})
    assert "must equal a.size(0) (3)" in spec.violation({"a": torch.zeros(3, 6), "b": torch.zeros(4, dtype=torch.long)})
    assert "outside the range [1, 8]" in spec.violation({"a": torch.zeros(9, 18), "b": torch.zeros(9, dtype=torch.long)})
    assert "missing" in spec.violation({"a": torch.zeros(3, 6)})
    assert "3 dimensions, the capture expects 2" in spec.violation({"a": torch.zeros(3, 6, 1), "b": torch.zeros(3, dtype=torch.long)})


def test_a_size_given_as_an_expression_is_checked_against_the_bound_symbols() -> None:
    """``2*s0`` (as torch.export writes a derived size) is evaluated with the symbols the other inputs bind."""
    from lxt_fx.tracing.guards import InputSpec

    spec = InputSpec({"a": ("float32", ("s0",)), "b": ("float32", ("2*s0",))}, {"s0": (1, None)})
    assert spec.violation({"a": torch.zeros(3), "b": torch.zeros(6)}) is None
    assert spec.violation({"a": torch.zeros(3), "b": torch.zeros(5)}) == "b.size(0) is 5, the capture requires 2*s0 = 6"
    unbound = InputSpec({"b": ("float32", ("2*s1",))}, {"s0": (1, None)})
    assert "which the other inputs do not determine" in unbound.violation({"b": torch.zeros(6)})
