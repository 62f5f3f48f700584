"""Draw an annotated GraphModule: layers coloured by bit-width, sized by importance.

:func:`draw` writes the dataflow graph as an SVG file and as one self-contained
HTML file (inline SVG, CSS and script; nothing fetched) in which hovering or
clicking a layer shows its name, kind, params, N_P, N_V, importance, margin
and bits. Nodes run top to bottom in execution order. By default only layer
nodes (plus input and output) are kept and the operations between them are
collapsed into edges, so a ResNet50 or a ViT stays readable.

Layout: graphviz's ``dot`` when it is on the PATH, else a layered layout
computed here with networkx (longest-path ranks, barycentre ordering). The
picture and the returned :class:`Drawing` say which was used.

This pass only reads the graph.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from torch import fx

from fxquant.core.importance import average_bits
from fxquant.passes.graph import to_networkx

__all__ = ["draw", "Drawing", "BIT_COLORS", "collapsed_graph"]

log = logging.getLogger("fxquant.visualize")

# Few bits (strong compression) dark, 8 bits light; a sequential, colour-blind-safe ramp.
BIT_COLORS = {1: "#3b0f70", 2: "#5c2a8c", 3: "#7c3f99", 4: "#a0529a", 5: "#c76a8b", 6: "#e58a74",
              7: "#f5b26b", 8: "#fbe08a"}
FLOAT_COLOR, UNDECIDED_COLOR, IO_COLOR = "#d0d0d0", "#ffffff", "#e8f1fb"
_ROW, _COL, _H = 46, 230, 30  # px: rank spacing, column spacing, node height


@dataclass(frozen=True)
class Drawing:
    svg: Path
    html: Path
    layout: str  # "graphviz dot" or "networkx"
    nodes: int


def collapsed_graph(gm: fx.GraphModule, collapse: bool = True, skip_edges: bool = False) -> nx.DiGraph:
    """The dataflow graph to draw: every node, or (``collapse``) layers, inputs and outputs only.

    Collapsed, a layer is joined to every later layer its output reaches without
    passing another layer; through a residual stream that is every later layer,
    so unless ``skip_edges`` only the edges not implied by others are kept (a
    transitive reduction: a ViT becomes a chain, ResNet blocks keep their
    downsample branches).
    """
    full = to_networkx(gm)
    if not collapse:
        return full
    keep = [n for n, a in full.nodes(data=True) if a["is_layer"] or a["op"] in ("placeholder", "output")]
    g = nx.DiGraph(name=full.graph.get("name", ""))
    for n in keep:
        g.add_node(n, **full.nodes[n])
    kept = set(keep)
    for n in keep:  # connect each kept node to the next kept nodes through collapsed ones
        seen, stack = set(), list(full.successors(n))
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            if m in kept:
                g.add_edge(n, m)
            else:
                stack.extend(full.successors(m))
    if skip_edges:
        return g
    reduced = nx.transitive_reduction(g)
    reduced.add_nodes_from(g.nodes(data=True))
    reduced.graph.update(g.graph)
    return reduced


def _info(attrs: dict) -> dict:
    """What the HTML panel shows for one node."""
    if not attrs.get("is_layer"):
        return {"node": attrs["target"], "op": attrs["op"]}
    layers = [{k: lay[k] for k in ("name", "kind", "params", "n_p", "n_v", "importance", "margin", "bits",
                                   "accuracy")} for lay in attrs["layers"]]
    return {"layers": layers}


def _color(attrs: dict, decided: bool) -> str:
    if not attrs.get("is_layer"):
        return IO_COLOR
    bits = attrs.get("bits")
    if bits is None:
        return FLOAT_COLOR if decided else UNDECIDED_COLOR
    return BIT_COLORS[min(8, max(1, round(bits)))]


def _networkx_layout(g: nx.DiGraph, widths: dict) -> tuple[dict, dict]:
    order = {n: i for i, n in enumerate(g.nodes)}
    rank = {}
    for n in g.nodes:  # execution order is a topological order
        rank[n] = max((rank[p] + 1 for p in g.predecessors(n)), default=0)
    by_rank: dict[int, list] = {}
    for n in g.nodes:
        by_rank.setdefault(rank[n], []).append(n)
    x = {}
    for r in sorted(by_rank):
        nodes = by_rank[r]
        bary = {n: sum(x[p] for p in g.predecessors(n)) / max(1, g.in_degree(n)) for n in nodes}
        nodes.sort(key=lambda n: (bary[n], order[n]))
        for i, n in enumerate(nodes):
            x[n] = (i - (len(nodes) - 1) / 2) * _COL
    pos = {n: (x[n], rank[n] * _ROW) for n in g.nodes}
    edges = {}
    for u, v in g.edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        y1, y2 = y1 + _H / 2, y2 - _H / 2
        span = rank[v] - rank[u]
        if span > 1:  # skip connection: bow out to the side so it does not cross the nodes between
            bow = max(widths[u], widths[v]) / 2 + 20 + 6 * min(span, 10)
            edges[(u, v)] = f"M{x1:.1f},{y1:.1f} C{x1 + bow:.1f},{y1 + _ROW:.1f} {x2 + bow:.1f},{y2 - _ROW:.1f} " \
                            f"{x2:.1f},{y2:.1f}"
        else:
            edges[(u, v)] = f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}"
    return pos, edges


def _dot_layout(g: nx.DiGraph, widths: dict, dot: str) -> tuple[dict, dict]:
    ids = {n: f"n{i}" for i, n in enumerate(g.nodes)}
    back = {v: k for k, v in ids.items()}
    lines = ["digraph G {", "rankdir=TB; nodesep=0.25; ranksep=0.3;", "node [shape=box, fixedsize=true];"]
    lines += [f'{ids[n]} [width={widths[n] / 72:.3f}, height={_H / 72:.3f}];' for n in g.nodes]
    lines += [f"{ids[u]} -> {ids[v]};" for u, v in g.edges]
    lines.append("}")
    out = subprocess.run([dot, "-Tplain"], input="\n".join(lines), capture_output=True, text=True,
                         check=True, timeout=120).stdout
    height, pos, edges = 0.0, {}, {}
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "graph":
            height = float(parts[3]) * 72
        elif parts[0] == "node":
            pos[back[parts[1]]] = (float(parts[2]) * 72, height - float(parts[3]) * 72)
        elif parts[0] == "edge":
            n = int(parts[3])
            pts = [(float(parts[4 + 2 * i]) * 72, height - float(parts[5 + 2 * i]) * 72) for i in range(n)]
            d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f} C" + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts[1:])
            edges[(back[parts[1]], back[parts[2]])] = d
    return pos, edges


def _label(name: str, attrs: dict) -> str:
    if not attrs.get("is_layer"):
        return "input" if attrs["op"] == "placeholder" else "output"
    bits = attrs.get("bits")
    tag = "float" if bits is None and attrs.get("_decided") else ("?" if bits is None else
                                                                    f"{bits:g}b" if bits % 1 else f"{int(bits)}b")
    names = [lay["name"] for lay in attrs["layers"]]
    if len(names) == 1:
        short = names[0][-30:]
    else:  # e.g. an attention module: its path, shared by its projection layers
        short = f"{os.path.commonprefix(names).rstrip('._')[-26:]} ({len(names)} layers)"
    return f"{short}  {tag}"


def _svg(g: nx.DiGraph, pos: dict, edges: dict, widths: dict, title: str, layout: str) -> str:
    xs = [pos[n][0] for n in g.nodes]
    ys = [pos[n][1] for n in g.nodes]
    margin, legend_h = 40, 70
    min_x = min(x - widths[n] / 2 for n, x in zip(g.nodes, xs)) - margin - 60
    max_x = max(x + widths[n] / 2 for n, x in zip(g.nodes, xs)) + margin + 60
    width = max(max_x - min_x, 640)
    height = max(ys) - min(ys) + _H + 2 * margin + legend_h
    oy = -min(ys) + margin + legend_h
    ox = -min_x
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#888"/></marker></defs>',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
           f'<text x="10" y="34" fill="#555">layout: {html.escape(layout)}; colour = bits, box width = '
           f'importance; hover or click a layer in the HTML version</text>']
    lx = 10
    for label, color in [*((f"{b} bit", c) for b, c in BIT_COLORS.items()), ("float", FLOAT_COLOR),
                         ("not decided", UNDECIDED_COLOR)]:
        out.append(f'<g class="legend"><rect x="{lx}" y="44" width="14" height="14" fill="{color}" '
                   f'stroke="#666"/><text x="{lx + 18}" y="55">{label}</text></g>')
        lx += 60 if label != "not decided" else 90
    out.append(f'<g transform="translate({ox:.1f},{oy:.1f})">')
    for (u, v), d in edges.items():
        out.append(f'<path class="edge" d="{d}" fill="none" stroke="#888" stroke-width="1.2" '
                   f'marker-end="url(#arrow)"/>')
    for n in g.nodes:
        a = g.nodes[n]
        x, y = pos[n]
        w = widths[n]
        info = html.escape(json.dumps(_info(a)), quote=True)
        tooltip = html.escape("\n".join(
            f"{lay['name']} ({lay['kind']}): {lay['params']:,} params, N_P={lay['n_p']:.4f}, "
            f"N_V={lay['n_v']:.3f}, importance={lay['importance']:.4f}, "
            + ("" if lay["margin"] is None else f"margin={lay['margin']}, ")  # the paper's search sets it
            + f"bits={lay['bits']}" for lay in a.get("layers", [])) or a["target"])
        cls = "layer" if a.get("is_layer") else "io"
        dash = ' stroke-dasharray="4,2"' if a.get("is_layer") and a.get("bits") is None else ""
        fill = _color(a, a.get("_decided", False))
        text_fill = "#fff" if fill in list(BIT_COLORS.values())[:5] else "#111"
        out.append(f'<g class="{cls}" id="{html.escape(n)}" data-info="{info}"><title>{tooltip}</title>'
                   f'<rect x="{x - w / 2:.1f}" y="{y - _H / 2:.1f}" width="{w:.1f}" height="{_H}" rx="6" '
                   f'fill="{fill}" stroke="#444"{dash}/>'
                   f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" fill="{text_fill}">'
                   f'{html.escape(_label(n, a))}</text></g>')
    out.append("</g></svg>")
    return "\n".join(out)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ margin: 0; font-family: Helvetica, Arial, sans-serif; display: flex; }}
#graph {{ flex: 1; overflow: auto; height: 100vh; }}
#panel {{ width: 330px; height: 100vh; overflow: auto; padding: 12px; box-sizing: border-box;
          border-left: 1px solid #ccc; background: #fafafa; font-size: 13px; }}
#panel table {{ border-collapse: collapse; width: 100%; margin-bottom: 10px; }}
#panel td {{ padding: 2px 4px; border-bottom: 1px solid #eee; }}
g.layer {{ cursor: pointer; }} g.layer:hover rect, g.layer.selected rect {{ stroke: #e00; stroke-width: 2.5; }}
</style></head><body>
<div id="graph">{svg}</div>
<div id="panel"><h3>{title}</h3><p>{summary}</p><p>Hover or click a layer.</p><div id="details"></div></div>
<script>
const fmt = v => (v === null || v === undefined) ? "-" : (typeof v === "number" && !Number.isInteger(v))
  ? v.toPrecision(4) : String(v);
// Layer names come from the model: only ever inserted as text, never as HTML.
function cell(row, text) {{ const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }}
function show(g) {{
  const info = JSON.parse(g.getAttribute("data-info"));
  const details = document.getElementById("details");
  details.replaceChildren();
  for (const l of (info.layers || [])) {{
    const table = document.createElement("table");
    for (const k of ["name","kind","params","n_p","n_v","importance","margin","bits","accuracy"]) {{
      const row = document.createElement("tr"); cell(row, k); cell(row, fmt(l[k])); table.appendChild(row);
    }}
    details.appendChild(table);
  }}
  if (!info.layers) {{ const p = document.createElement("p"); p.textContent = info.op + ": " + info.node;
    details.appendChild(p); }}
}}
let selected = null;
document.querySelectorAll("g.layer, g.io").forEach(g => {{
  g.addEventListener("mouseenter", () => {{ if (!selected) show(g); }});
  g.addEventListener("click", () => {{
    if (selected) selected.classList.remove("selected");
    selected = (selected === g) ? null : g;
    if (selected) {{ g.classList.add("selected"); show(g); }}
  }});
}});
</script></body></html>
"""


def draw(gm: fx.GraphModule, path: str | Path, *, collapse: bool = True, skip_edges: bool = False,
         layout: str = "auto", title: str | None = None) -> Drawing:
    """Write ``<path>.svg`` and ``<path>.html`` (the suffix of ``path`` is replaced); reads only.

    Args:
        gm: a GraphModule annotated by ``passes.annotate_importance`` (as returned
            by ``fxquant.compress``/``fxquant.quantize``, or before any search).
        collapse: keep only layer, input and output nodes.
        skip_edges: when collapsed, also draw edges implied by longer paths
            (residual connections); off by default for legibility.
        layout: ``"auto"`` (dot if installed), ``"dot"`` or ``"networkx"``.
    """
    if layout not in ("auto", "dot", "networkx"):
        raise ValueError(f"layout must be 'auto', 'dot' or 'networkx', got {layout!r}")
    g = collapsed_graph(gm, collapse, skip_edges)
    layer_nodes = [n for n, a in g.nodes(data=True) if a.get("is_layer")]
    if not layer_nodes:
        raise ValueError("the graph carries no fxquant annotations: run passes.annotate_importance first, "
                         "or draw the result of fxquant.compress / fxquant.quantize")
    decided = any(lay["bits"] is not None for n in layer_nodes for lay in g.nodes[n]["layers"])
    top = max(g.nodes[n]["importance"] for n in layer_nodes) or 1.0
    widths = {}
    for n, a in g.nodes(data=True):
        a["_decided"] = decided
        text_width = 6.6 * len(_label(n, a)) + 16  # never narrower than its label
        widths[n] = max(text_width, 120 + 110 * a["importance"] / top) if a.get("is_layer") else 80
    dot = shutil.which("dot")
    if layout == "dot" and dot is None:
        raise ValueError("layout='dot' needs graphviz's dot on the PATH (e.g. apt-get install graphviz)")
    if layout != "networkx" and dot is not None:
        pos, edges = _dot_layout(g, widths, dot)
        used = "graphviz dot"
    else:
        pos, edges = _networkx_layout(g, widths)
        used = "networkx" + (" (graphviz dot not installed)" if layout == "auto" else "")
    layers = [lay for n in layer_nodes for lay in g.nodes[n]["layers"]]
    params = [lay["params"] for lay in layers]
    summary = f"{len(layers)} layers, {sum(params):,} weights" + (
        f", average {average_bits(params, [lay['bits'] for lay in layers]):.2f} bits (eq. 5)" if decided
        else ", bits not decided yet")
    name = title or f"{g.graph.get('name') or type(gm).__name__}: {summary}"
    svg = _svg(g, pos, edges, widths, name, used)
    path = Path(path)
    svg_path, html_path = path.with_suffix(".svg"), path.with_suffix(".html")
    svg_path.parent.mkdir(parents=True, exist_ok=True)
    svg_path.write_text(svg)
    html_path.write_text(_HTML.format(title=html.escape(name), svg=svg, summary=html.escape(summary)))
    log.info("fxquant: drew %d nodes to %s and %s (layout: %s)", g.number_of_nodes(), svg_path, html_path, used)
    return Drawing(svg=svg_path, html=html_path, layout=used, nodes=g.number_of_nodes())
