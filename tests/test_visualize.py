"""Annotated-graph pictures (SVG + self-contained HTML) and the matplotlib report plot."""

import re
import shutil
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

import fxquant
from fxquant import passes
from tests.models import build


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def _texts(svg_path):
    root = ET.parse(svg_path).getroot()  # well-formed XML or this raises
    return [el.text or "" for el in root.iter("{http://www.w3.org/2000/svg}text")]


@pytest.mark.parametrize("layout", ["networkx", pytest.param("dot", marks=pytest.mark.skipif(
    shutil.which("dot") is None, reason="graphviz not installed"))])
def test_compressed_model_picture_lists_every_layer_with_its_bits(tmp_path, layout):
    model, _, names = build("conv_zoo")
    widths = dict(zip(names, [1, 2, 3, 4, 5, 8]))
    q = fxquant.quantize(model, widths)
    drawing = fxquant.draw(q, tmp_path / "g.svg", layout=layout)
    assert drawing.layout.startswith("graphviz" if layout == "dot" else "networkx")
    texts = _texts(drawing.svg)
    for name, bits in widths.items():
        assert any(t.startswith(name) and t.endswith(f"{bits}b") for t in texts), name
    assert f"layout: {drawing.layout}" in " ".join(texts)
    assert all(f"{b} bit" in texts for b in range(1, 9))  # the legend
    parser = _Collect()
    page = drawing.html.read_text()
    parser.feed(page)
    assert "svg" in parser.tags and "script" in parser.tags
    assert parser.urls == []  # nothing fetched: self-contained
    for name in names:
        assert f"&quot;name&quot;: &quot;{name}&quot;" in page  # the hover/click data of each layer


def test_annotated_but_unsearched_graph_and_multi_layer_nodes(tmp_path):
    model, _, names = build("tiny_vit")
    gm = passes.trace(model)
    passes.annotate_importance(gm)
    drawing = fxquant.draw(gm, tmp_path / "vit")
    texts = _texts(drawing.svg)
    assert any("(2 layers)" in t and t.endswith("?") for t in texts)  # the MultiheadAttention node
    assert any("bits not decided yet" in t for t in texts)
    assert drawing.nodes == len(names) + 2 - 1  # in_proj and out_proj share the attention node


def test_collapse_false_keeps_every_node(tmp_path):
    model, _, _ = build("conv_zoo")
    q = fxquant.quantize(model, 4)
    assert fxquant.draw(q, tmp_path / "all", collapse=False).nodes == len(q.graph.nodes)


def test_fallback_when_graphviz_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    model, _, _ = build("called_twice")
    q = fxquant.quantize(model, 4)
    assert fxquant.draw(q, tmp_path / "g").layout == "networkx (graphviz dot not installed)"
    with pytest.raises(ValueError, match="graphviz"):
        fxquant.draw(q, tmp_path / "g", layout="dot")


def test_unannotated_graph_is_refused(tmp_path):
    model, _, _ = build("conv_zoo")
    with pytest.raises(ValueError, match="annotat"):
        fxquant.draw(passes.trace(model), tmp_path / "g")


def test_plot_writes_an_image(tmp_path):
    model, _, names = build("conv_zoo")
    rep = fxquant.report(fxquant.quantize(model, {n: 4 for n in names[:-1]}))
    out = fxquant.plot(rep, tmp_path / "r.png", sweep={8: 99.0, 4: 97.5, 2: 60.0}, results={"adaptive": (3.1, 98.7)})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = fxquant.plot(rep, tmp_path / "r.svg")
    assert re.search(r"<svg", svg.read_text())


def test_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    model, _, _ = build("conv_zoo")
    rep = fxquant.report(fxquant.quantize(model, 4))
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        fxquant.plot(rep, tmp_path / "r.png")
