"""Rendering: self-contained HTML (parsed from a file), rich tables, networkx with one node per graph node;
and no check ever changes the user's model."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import torch
from check_models import MLP, assert_untouched, snapshot, without
from conftest import VOCAB, make_model
from rich.console import Console

import lxt_fx
from lxt_fx.check import check
from lxt_fx.render.rewrite_report import per_block, rewrite_html, rewrite_networkx, rewrite_rich
from lxt_fx.session import rewritten_graph

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr"}


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str, tmp_path: Path, name: str) -> _Checker:
    path = tmp_path / name
    path.write_text("<!doctype html><meta charset='utf-8'>\n" + text, encoding="utf-8")
    parser = _Checker()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    assert "script" not in parser.tags  # no notebook server, no JS
    return parser


def test_html_rich_networkx_and_the_model_is_untouched(tmp_path: Path) -> None:
    model = make_model("llama", "sdpa")
    before = snapshot(model)
    ids = torch.randint(0, VOCAB, (1, 6))
    composite = without("Identity", "IdentityRegion", name="no-activation")
    report = check(model, ids, composite=composite)
    lxt_fx.explain(model, ids, capture=["model.layers.0", "inputs_embeds"])
    assert_untouched(model, before, training=False)

    page = _parse(report._repr_html_(), tmp_path, "check.html")
    text = " ".join(page.text)
    assert page.tags.count("table") >= 4 and "UNHANDLED" in text and "model.layers.0.mlp.act_fn" in text
    assert "silu" in text and "zero-bias" in text

    console = Console(width=140, record=True, file=open(tmp_path / "out.txt", "w"))  # noqa: SIM115
    console.print(report)
    printed = console.export_text()
    assert "checks" in printed and "per block" in printed and "UNHANDLED" in printed
    assert "coverage" in str(report)

    tensors = {"inputs_embeds": model.get_input_embeddings()(ids), "attention_mask": torch.ones_like(ids)}
    graph = rewritten_graph(model, composite, tensors, {})  # the cached graph the check used
    g = report.to_networkx()
    assert g.number_of_nodes() == len(graph.module.graph.nodes)
    assert g.nodes["silu"]["kind"] == "UNHANDLED" and g.nodes["silu"]["on_path"]
    assert g.nodes["silu"]["module_path"] == "model.layers.0.mlp.act_fn"
    assert g.nodes["scaled_dot_product_attention"]["rule"] == "attention"
    assert g.has_edge("linear_4", "silu")
    blocks = report.blocks()
    assert [b.label for b in blocks] == ["embeddings", "block 0", "block 1", "head", "target"]
    assert blocks[1].unhandled == 1 and blocks[1].rules["attention"] == 1

    rewrite = report.rewrite
    assert per_block(rewrite) == [("blocks 0–1", {"attention": 1, "stop": 2, "uniform": 1}, 1),
                                  ("outside blocks", {"stop": 1}, 0)]
    page = _parse(rewrite_html(rewrite), tmp_path, "rewrite.html")
    assert "UNHANDLED" in " ".join(page.text)
    Console(width=140, file=open(tmp_path / "rw.txt", "w")).print(rewrite_rich(rewrite))  # noqa: SIM115
    full = rewrite_networkx(rewrite, graph)
    assert full.number_of_nodes() == len(graph.module.graph.nodes)
    tree = rewrite_networkx(rewrite)
    assert tree.nodes["silu"]["kind"] == "unhandled" and tree.has_edge("module:model.layers.0.mlp.act_fn", "silu")


def test_mlp_untouched_by_zero_bias_mode() -> None:
    model = MLP().train()  # also in training mode: the check must not flip it
    before = snapshot(model)
    check(model, {"inputs_embeds": torch.randn(1, 3, 16)})
    assert_untouched(model, before, training=True)
