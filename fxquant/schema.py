"""Result types of the fxquant passes: plain frozen dataclasses, no behaviour.

The passes write them (``find_layers`` returns :class:`Layer`; the importance pass
puts one :class:`NodeAnnotation` of :class:`LayerInfo` under ``node.meta[META_KEY]``;
the search returns a :class:`SearchResult`); the file format and the report read
them. Keeping them here lets those higher layers read results without importing
any pass, and lets the passes depend on nothing above the numeric core.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from fxquant.core.config import QuantConfig, check_bits, is_bit_width

__all__ = ["META_KEY", "Layer", "LayerInfo", "NodeAnnotation", "SearchConfig", "LayerDecision",
           "SearchResult", "FrontierPoint", "MARGINS", "SCALES", "STRATEGIES", "EVALUATIONS", "METHODS"]

@dataclass(frozen=True)
class Layer:
    """Where one quantizable weight lives and which graph node computes with it."""

    name: str  # stable public name
    kind: str  # float module class ("Conv2d", "Linear", ...), "MultiheadAttention.in_proj_weight", "Parameter"
    how: str  # "module" | "mha" | "param"
    module_path: str  # owner module's qualified name ("" = the root)
    attr: str  # the parameter's attribute on its owner
    node: str  # name of the graph node that uses it
    order: int  # execution order among layers (0 = first)
    shape: tuple[int, ...]
    tied: tuple[str, ...] = ()  # parameter paths of other owners sharing this weight (tying)

    @property
    def params(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def param_path(self) -> str:
        return f"{self.module_path}.{self.attr}" if self.module_path else self.attr


META_KEY = "fxquant"


@dataclass(frozen=True)
class LayerInfo:
    """One layer's statistics and, once decided, its bit-width."""

    name: str
    kind: str
    order: int
    shape: tuple[int, ...]
    params: int
    n_p: float  # eq. 1
    variance: float
    n_v: float  # eq. 2
    importance: float  # eq. 3
    bits: int | None = None  # None = not decided yet / kept in float
    margin: float | None = None  # T_margin(l) the search used (percentage points)
    accuracy: float | None = None  # oracle value after this layer's decision
    candidates_tried: tuple[int, ...] = ()


@dataclass(frozen=True)
class NodeAnnotation:
    """What ``node.meta["fxquant"]`` holds: the layers a graph node computes with."""

    layers: tuple[LayerInfo, ...]

    @property
    def importance(self) -> float:
        return max(info.importance for info in self.layers)

    @property
    def params(self) -> int:
        return sum(info.params for info in self.layers)

    @property
    def bits(self) -> float | None:
        """Parameter-weighted mean bits of the node's decided layers (None if none decided)."""
        decided = [i for i in self.layers if i.bits is not None]
        if not decided:
            return None
        return sum(i.bits * i.params for i in decided) / sum(i.params for i in decided)


MARGINS = ("adaptive", "fixed")
SCALES = ("none", "max")
STRATEGIES = ("sequential", "bisect")
EVALUATIONS = ("fast", "naive")
METHODS = ("auto", "paper", "sensitivity")
PAPER_ONLY = ("margin", "importance_scale", "edge_factor", "strategy")  # fields only the paper's greedy reads


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the bit-width search (validated)."""

    candidates: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    margin: str = "adaptive"
    t_init: float = 0.5  # percentage points (or the user oracle's units)
    importance_scale: str = "none"
    edge_factor: float = 0.5
    strategy: str = "sequential"
    evaluation: str = "fast"
    baseline_bits: int = 8
    w_p: float = 0.5
    w_v: float = 0.5
    quant: QuantConfig = field(default_factory=QuantConfig)
    cache_mb: float = 4096  # activations kept by fast evaluation for layers searched later
    hardest_first: bool = True  # re-batch calibration samples least-confident-first (see evaluate.py)
    # "paper": the greedy of section 2.2; "sensitivity": measured per-layer sensitivities allocated
    # globally (passes/sensitivity_search.py); "auto": "sensitivity", or "paper" when a custom oracle
    # comes without calibration inputs to measure sensitivities on (search_bits resolves it).
    method: str = "auto"
    target_bits: float | None = None  # budget: eq. 5 average bits <= target_bits (sensitivity method)
    max_bytes: int | None = None  # budget: packed weight + scale + zero-point bytes <= max_bytes
    sensitivity_samples: int = 512  # calibration images the sensitivities are measured on (0: all)
    budget_checks: int = 3  # frontier points at the budget the oracle compares (interactions)
    accept_sigmas: float = 2.0  # accuracy mode: statistical margin on the drop (passes/accuracy_mode.py)

    def __post_init__(self) -> None:
        cands = tuple(self.candidates) if not isinstance(self.candidates, (str, bytes)) else ()
        if not cands or not all(is_bit_width(b) for b in cands):
            raise ValueError(f"SearchConfig.candidates must be bit-widths in 1..8, got {self.candidates!r}")
        object.__setattr__(self, "candidates", tuple(sorted(set(cands))))
        for label, value, allowed in (("margin", self.margin, MARGINS),
                                      ("importance_scale", self.importance_scale, SCALES),
                                      ("strategy", self.strategy, STRATEGIES),
                                      ("evaluation", self.evaluation, EVALUATIONS),
                                      ("method", self.method, METHODS)):
            if value not in allowed:
                raise ValueError(f"SearchConfig.{label} must be one of {allowed}, got {value!r}")
        for label, value in (("t_init", self.t_init), ("edge_factor", self.edge_factor),
                             ("w_p", self.w_p), ("w_v", self.w_v), ("cache_mb", self.cache_mb)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                    or value == float("inf"):
                raise ValueError(f"SearchConfig.{label} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.hardest_first, bool):
            raise ValueError(f"SearchConfig.hardest_first must be True or False, got {self.hardest_first!r}")
        check_bits(self.baseline_bits, "SearchConfig.baseline_bits")
        if self.target_bits is not None and (isinstance(self.target_bits, bool) or not isinstance(
                self.target_bits, (int, float)) or not 0 < self.target_bits < float("inf")):
            raise ValueError(f"SearchConfig.target_bits must be a finite number > 0 or None, got {self.target_bits!r}")
        if self.max_bytes is not None and (isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int)
                                           or self.max_bytes <= 0):
            raise ValueError(f"SearchConfig.max_bytes must be an int > 0 or None, got {self.max_bytes!r}")
        if self.target_bits is not None and self.max_bytes is not None:
            raise ValueError("SearchConfig: give target_bits or max_bytes, not both")
        if self.method == "paper" and self.budgeted:
            raise ValueError("SearchConfig: method='paper' has no budget mode; use method='sensitivity' "
                             "(or 'auto') with target_bits/max_bytes")
        if self.method != "paper":
            # Ignoring them would hand back a model the caller did not ask for, silently.
            steered = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                       if f.name in PAPER_ONLY and getattr(self, f.name) != f.default]
            if steered:
                raise ValueError(f"SearchConfig: {', '.join(steered)} only steer(s) method='paper' (the paper's "
                                 f"greedy), not method={self.method!r}, the sensitivity search; pass method='paper'")
        for label, value, low in (("sensitivity_samples", self.sensitivity_samples, 0),
                                  ("budget_checks", self.budget_checks, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SearchConfig.{label} must be an int >= {low}, got {value!r}")
        if isinstance(self.accept_sigmas, bool) or not isinstance(self.accept_sigmas, (int, float)) \
                or not 0 <= self.accept_sigmas < float("inf"):
            raise ValueError(f"SearchConfig.accept_sigmas must be a finite number >= 0, got {self.accept_sigmas!r}")
        if not isinstance(self.quant, QuantConfig):
            raise ValueError(f"SearchConfig.quant must be a QuantConfig, got {type(self.quant).__name__}")

    @property
    def budgeted(self) -> bool:
        return self.target_bits is not None or self.max_bytes is not None

    @property
    def resolved_method(self) -> str:
        """``method`` with "auto" resolved when inputs exist to measure on: "sensitivity".

        The one exception (a custom oracle, no budget, no calibration inputs) is
        resolved by :func:`fxquant.passes.search_bits`, which knows the inputs.
        """
        return "sensitivity" if self.method == "auto" else self.method


@dataclass(frozen=True)
class LayerDecision:
    """How the search decided one layer's width: the margin, the threshold and every width tried.

    ``threshold`` is the oracle value a width had to reach (the all-8-bit value minus
    ``margin``); ``tried`` lists ``(bits, oracle value, complete)`` in trial order,
    where an incomplete (early-stopped) value is an upper bound.
    """

    name: str
    importance: float
    margin: float
    threshold: float
    tried: tuple[tuple[int, float, bool], ...]  # (bits, oracle value, complete evaluation)
    bits: int
    accuracy: float  # oracle value once this layer is decided


@dataclass(frozen=True)
class FrontierPoint:
    """One allocation on the size/sensitivity frontier the sensitivity search walked."""

    average_bits: float  # eq. 5 over every layer (float layers count 32)
    nbytes: int  # packed weights + scales + zero points of the quantized layers
    sensitivity: float  # sum of the layers' measured sensitivities (mean KL, nats)
    value: float | None  # oracle value, None where it was not evaluated
    chosen: bool = False
    kl: float | None = None  # accuracy mode: the whole model's mean KL against float, where measured


@dataclass(frozen=True)
class SearchResult:
    """The outcome of one bit-width search, kept as ``qmodel.meta["fxquant"]``.

    ``float_value``, ``baseline_value`` and ``final_value`` are the oracle's values of
    the float, all-8-bit and final models; ``oracle_calls`` and ``layer_forwards``
    count the work done, ``seconds`` its time.
    """

    bits: dict[str, int]  # every quantized layer (searched and kept at 8 bits)
    decisions: tuple[LayerDecision, ...]  # in visiting order
    float_value: float
    baseline_value: float
    final_value: float
    oracle_calls: int
    layer_forwards: int
    seconds: float
    evaluation: str  # what was actually used: "fast" or "naive"
    config: SearchConfig  # as used: ``quant.rounding`` resolved ("gptq" or "nearest")
    method: str = "paper"  # the method actually run
    # sensitivity method: {layer: {bits: mean KL(float || layer alone at bits)}}, measured widths only
    sensitivity: dict[str, dict[int, float]] = field(default_factory=dict)
    frontier: tuple[FrontierPoint, ...] = ()  # ascending size; the oracle-checked points have a value
