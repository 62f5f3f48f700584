"""The Table 1 report's per-layer view: which width each search gave each layer, and which layers decide eq. 5.

Eq. 5 weighs a layer's bits by its parameter count, so one large layer can decide
the average: at 64x64 inputs VGG19's first classifier layer (25088 x 4096) holds
about 74% of the weights, and ResNet18's ``layer4`` convolutions about three quarters.
:func:`section` renders, for every search row that stored ``layer_bits``, the
width per layer, and (when the row also stored ``layer_params``) each layer's
share of the weights and of the average. Pure: reads the row dicts only.
"""

from __future__ import annotations

__all__ = ["dominant_layers", "section"]

SHOWN_SHARE = 0.10  # layers with at least this share of the weights are named in the summary line


def dominant_layers(params: dict[str, int], bits: dict[str, int | None]) -> list[tuple[str, float, float]]:
    """``(layer, share of weights, share of the eq. 5 bit count)``, largest weight share first."""
    total = sum(params.values())
    counted = {n: params[n] * (32 if bits.get(n) is None else bits[n]) for n in params}
    all_bits = sum(counted.values()) or 1
    out = [(n, params[n] / total, counted[n] / all_bits) for n in params]
    return sorted(out, key=lambda t: -t[1])


def section(rows: dict[str, dict], labels: dict[str, str]) -> list[str]:
    """Markdown lines: one column of widths per search row (``labels``: row key -> column title)."""
    shown = {k: rows[k] for k in labels if k in rows and rows[k].get("layer_bits")}
    if not shown:
        return []
    names = list(next(iter(shown.values()))["layer_bits"])
    params = next((r["layer_params"] for r in shown.values() if r.get("layer_params")), None)
    lines = ["Bits per layer chosen by each search (execution order"
             + ("; share = the layer's fraction of all quantized weights, which is its weight in eq. 5"
                if params else "") + "):", ""]
    head = "| layer |" + (" share |" if params else "") + "".join(f" {labels[k]} |" for k in shown)
    lines += [head, "|---|" + ("---:|" if params else "") + "---:|" * len(shown)]
    total = sum(params.values()) if params else 0
    for n in names:
        share = f" {100 * params[n] / total:.1f}% |" if params and n in params else (" – |" if params else "")
        cells = "".join(f" {r['layer_bits'].get(n) if r['layer_bits'].get(n) is not None else 'float'} |"
                        for r in shown.values())
        lines.append(f"| {n} |{share}{cells}")
    if params:
        for k, r in shown.items():
            top = [t for t in dominant_layers(params, r["layer_bits"]) if t[1] >= SHOWN_SHARE]
            if top:
                lines += ["", f"{labels[k]}, layers holding >= {100 * SHOWN_SHARE:.0f}% of the weights: "
                          + "; ".join(f"{n} {100 * w:.1f}% at {r['layer_bits'][n]} bits "
                                      f"({100 * b:.1f}% of the bit count)" for n, w, b in top) + "."]
    return lines + [""]
