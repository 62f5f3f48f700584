"""``CompressionReport``: what the compression did, per layer and in total."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from torch import fx

from fxquant import passes
from fxquant.core.importance import FLOAT_BITS, average_bits
from fxquant.nn.storage import weight_storage

__all__ = ["LayerReport", "CompressionReport", "report", "FLOAT_BITS"]



@dataclass(frozen=True)
class LayerReport:
    """One row of the report: a layer's importance terms (eqs. 1-3), margin, bits and oracle value."""

    name: str
    kind: str
    params: int
    n_p: float
    n_v: float
    importance: float
    margin: float | None  # None: not searched (kept at 8 bits, or float)
    bits: int | None  # None: kept in float
    accuracy: float | None  # oracle value after this layer's decision
    sensitivity: dict[int, float] | None = None  # sensitivity search: {bits: mean KL} at the measured widths


@dataclass(frozen=True)
class CompressionReport:
    """What ``fxquant.report(qmodel)`` returns: per-layer rows, eq. 5 average bits, sizes, search figures.

    ``str()`` / :meth:`to_text` give the table, :meth:`to_dict` / :meth:`to_json` the
    JSON form (:meth:`from_dict` reads it back). The oracle values and search figures
    are ``None`` for a model from ``fxquant.quantize``.
    """

    layers: tuple[LayerReport, ...]  # execution order
    average_bits: float  # eq. 5; float layers, and float weights no layer names, count as 32 bits
    packed_bytes: int  # integer weight bytes
    float32_bytes: int  # the packed layers' weights as float32 (layers kept float excluded)
    grid_bytes: int  # per-channel scales and zero points
    float_value: float | None = None  # oracle of the float model
    baseline_value: float | None = None  # oracle of the all-8-bit model
    final_value: float | None = None  # oracle of the compressed model
    oracle_calls: int | None = None
    layer_forwards: int | None = None
    seconds: float | None = None
    evaluation: str | None = None
    settings: dict | None = None
    # Conv/linear/attention weights left float, counted by module type and graph, not by the layer
    # finder (fxquant.passes.coverage): parameter path -> elements. None in reports of older files.
    float_weights: dict[str, int] | None = None
    float_fraction: float | None = None  # their share of all conv/linear/attention weight elements
    method: str | None = None  # "paper" or "sensitivity"
    frontier: tuple[dict, ...] | None = None  # sensitivity search: FrontierPoint fields, ascending size

    @property
    def compression_ratio(self) -> float:
        return self.float32_bytes / max(1, self.packed_bytes + self.grid_bytes)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["compression_ratio"] = self.compression_ratio
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "CompressionReport":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        layers = []
        for layer in data["layers"]:
            layer = dict(layer)
            if layer.get("sensitivity") is not None:  # JSON turned the widths into strings
                layer["sensitivity"] = {int(b): float(v) for b, v in layer["sensitivity"].items()}
            layers.append(LayerReport(**layer))
        kwargs["layers"] = tuple(layers)
        if kwargs.get("frontier") is not None:
            kwargs["frontier"] = tuple(dict(p) for p in kwargs["frontier"])
        return cls(**kwargs)

    def to_text(self) -> str:
        def fmt(value, spec):
            return "-" if value is None else format(value, spec)

        rows = [f"{'layer':<40} {'kind':<16} {'params':>10} {'N_P':>7} {'N_V':>6} {'import.':>7} "
                f"{'margin':>7} {'bits':>5} {'acc.':>7}"]
        for lay in self.layers:
            bits = "float" if lay.bits is None else str(lay.bits)
            rows.append(f"{lay.name[-40:]:<40} {lay.kind[:16]:<16} {lay.params:>10,} {lay.n_p:>7.4f} "
                        f"{lay.n_v:>6.3f} {lay.importance:>7.4f} {fmt(lay.margin, '7.4f'):>7} {bits:>5} "
                        f"{fmt(lay.accuracy, '7.2f'):>7}")
        mb = 1024 * 1024
        rows.append("")
        rows.append(f"average bits (eq. 5): {self.average_bits:.3f}   weights: "
                    f"{self.float32_bytes / mb:.2f} MiB float32 -> {self.packed_bytes / mb:.2f} MiB packed "
                    f"+ {self.grid_bytes / 1024:.1f} KiB scales ({self.compression_ratio:.1f}x)")
        if self.float_weights:
            names = list(self.float_weights)
            rows.append(f"left float: {self.float_fraction:.1%} of the conv/linear/attention weight elements "
                        f"({len(names)} tensors: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})")
        if self.final_value is not None:
            rows.append(f"oracle: float {self.float_value:.3f}, 8-bit {self.baseline_value:.3f}, "
                        f"final {self.final_value:.3f}   {self.oracle_calls} oracle calls, "
                        f"{self.layer_forwards:,} layer-forwards ({self.evaluation}), {self.seconds:.1f} s")
        if self.frontier:
            checked = sum(p["value"] is not None for p in self.frontier)
            rows.append(f"search: {self.method}, {len(self.frontier)} frontier points shown, {checked} checked "
                        "by the oracle")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.to_text()


def report(qmodel: fx.GraphModule) -> CompressionReport:
    """The report of a model returned by ``fxquant.compress`` (or ``fxquant.quantize``)."""
    infos = passes.layer_infos(qmodel)
    if not infos:
        raise ValueError("this model carries no fxquant annotations: pass the GraphModule returned by "
                         "fxquant.compress or fxquant.quantize")
    summary = getattr(qmodel, "meta", {}).get("fxquant")
    sens = getattr(summary, "sensitivity", None) or {}
    layers = tuple(LayerReport(name=i.name, kind=i.kind, params=i.params, n_p=i.n_p, n_v=i.n_v,
                               importance=i.importance, margin=i.margin, bits=i.bits, accuracy=i.accuracy,
                               sensitivity=dict(sens[i.name]) if i.name in sens else None)
                   for i in infos)
    storage = weight_storage(qmodel)
    coverage = passes.weight_coverage(qmodel)
    missed = list(coverage.missed.values())  # weights no layer names: float too, so 32 bits in eq. 5
    avg = average_bits([i.params for i in infos] + missed, [i.bits for i in infos] + [None] * len(missed))
    extra = {}
    if summary is not None:
        extra = dict(float_value=summary.float_value, baseline_value=summary.baseline_value,
                     final_value=summary.final_value, oracle_calls=summary.oracle_calls,
                     layer_forwards=summary.layer_forwards, seconds=summary.seconds,
                     evaluation=summary.evaluation, method=getattr(summary, "method", None),
                     frontier=tuple(asdict(p) for p in getattr(summary, "frontier", ())) or None,
                     settings=json.loads(json.dumps(asdict(summary.config))))  # JSON-shaped
    return CompressionReport(layers=layers, average_bits=avg, packed_bytes=storage.packed_bytes,
                             float32_bytes=storage.float32_bytes, grid_bytes=storage.grid_bytes,
                             float_weights=coverage.float_weights, float_fraction=coverage.float_fraction,
                             **extra)
