"""``fxquant.explore``: measure a model once, then compress it at as many budgets as you like.

``compress(model, calib, target_bits=B)`` spends most of its time on what does not
depend on ``B``: the quantizer's statistics, every candidate width of every layer,
the float model's value and each layer's sensitivity at each width. An
:class:`Exploration` keeps those; each :meth:`Exploration.compress` then only walks
the frontier and runs the ``budget_checks`` oracle evaluations at its budget, and
returns the model ``compress`` would have returned for that budget (same widths,
same weights; ``tests/test_explore.py`` pins it).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Callable, Collection, Iterable

from torch import fx, nn

from fxquant import passes
from fxquant.api import FilterFn, check_model, make_oracle, prepare_search, search_config, warn_float_weights
from fxquant.engine import distributed as fxdist
from fxquant.logs import ensure_progress_output
from fxquant.passes.sensitivity_search import Measurement, allocate, budget_sizes, frontier_point, measure
from fxquant.schema import FrontierPoint, SearchConfig

__all__ = ["explore", "Exploration"]

log = logging.getLogger("fxquant.api")


class Exploration:
    """A model measured for the sensitivity search, made by :func:`explore`; compress it at any budget.

    Holds a traced copy of the model, every measured candidate width of every layer
    and the calibration inputs: :meth:`close` (or ``with fxquant.explore(...) as ex:``)
    frees them. Single-process (no ``torch.distributed`` split).
    """

    def __init__(self, measurement: Measurement, all_layers: list[passes.Layer], mapping):
        self._m: Measurement | None = measurement
        self._all_layers, self._mapping = all_layers, mapping

    def _open(self) -> Measurement:
        if self._m is None:
            raise ValueError("this Exploration is closed; call fxquant.explore again")
        return self._m

    @property
    def measure_seconds(self) -> float:
        """Time spent measuring (statistics, float value, sensitivities): part of every result's ``seconds``."""
        return self._open().seconds

    @property
    def sensitivity(self) -> dict[str, dict[int, float]]:
        """``{layer: {bits: mean KL}}`` at the measured widths (as in the report of ``compress``)."""
        return {name: dict(per) for name, per in self._open().measured.items()}

    def frontier(self) -> tuple[FrontierPoint, ...]:
        """List the eq. 5 frontier (size = params x bits, ascending), ``value`` None: not evaluated.

        ``target_bits`` budgets choose along it; a ``max_bytes`` budget walks the frontier in
        packed bytes instead (nearly the same: packed bytes round each layer up to whole bytes).
        """
        m = self._open()
        cfg = dataclasses.replace(m.cfg, target_bits=None, max_bytes=None)
        sizes, _, _, _ = budget_sizes(cfg, m.all_layers, m.searched, m.kept, m.quantizer)
        return tuple(frontier_point(cfg, m.quantizer, m.searched, m.kept, m.all_layers, p, None, False)
                     for p in m.frontier(sizes).points)

    def compress(self, *, target_bits: float | None = None, max_bytes: int | None = None,
                 budget_checks: int | None = None, verbose: bool | None = None) -> fx.GraphModule:
        """Compress the measured model within one budget; returns what ``fxquant.compress`` would.

        Args:
            target_bits / max_bytes: the budget, as for ``compress`` (one of them); an
                infeasible one raises ``ValueError`` naming the smallest feasible budget.
            budget_checks: frontier points at the budget the oracle compares (default: the
                measured config's).
            verbose: log this call's search line (default: as given to :func:`explore`).

        Runs the ``budget_checks`` oracle evaluations and the all-``baseline_bits`` one. The
        result's report counts the shared measurement in ``seconds``, ``oracle_calls`` and
        ``layer_forwards``, as one ``compress`` call would.
        """
        m = self._open()
        if target_bits is None and max_bytes is None:
            raise ValueError("Exploration.compress needs a budget: target_bits=B or max_bytes=N")
        options = {"target_bits": target_bits, "max_bytes": max_bytes}
        if budget_checks is not None:
            options["budget_checks"] = budget_checks
        cfg = dataclasses.replace(m.cfg, **options)  # validates like compress
        result = allocate(m, cfg, verbose=verbose)
        gm = copy.deepcopy(m.gm)  # float weights (allocate restored them), this budget's widths in node.meta
        passes.rewrite(gm, result.bits, config=result.config.quant, mapping=self._mapping, layers=self._all_layers,
                       quantized=m.quantizer.chosen(result.bits))
        gm.meta["fxquant"] = result
        warn_float_weights(gm)
        return gm

    def close(self) -> None:
        """Free the traced copy, the quantized candidates and the activations; later calls raise."""
        if self._m is not None:
            self._m.release()
            self._m = None

    def __enter__(self) -> Exploration:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def explore(model: nn.Module, calib_loader: Iterable | None = None, *, oracle: Callable | None = None,
            stats_loader: Iterable | None = None, config: SearchConfig | None = None, filter_fn: FilterFn | None = None,
            keep_8bit: FilterFn | Collection[str] | None = None, leaf_modules: Iterable[str] = (),
            mapping: dict[type, type] | None = None, verbose: bool = True, **options) -> Exploration:
    """Measure ``model`` once for budget mode; returns an :class:`Exploration` (``.compress(target_bits=B)``).

    Arguments as for :func:`fxquant.compress`, without a budget (give it to
    :meth:`Exploration.compress`) and without ``distributed``; ``method`` is
    ``"sensitivity"`` (the paper's greedy has no budget mode). ``model`` is never modified.
    """
    dtype = check_model(model, "fxquant.explore")
    cfg = search_config(config, options, who="explore")
    if cfg.budgeted:
        raise ValueError("fxquant.explore measures for every budget: pass target_bits/max_bytes to "
                         "Exploration.compress, not to explore")
    if cfg.method == "paper":
        raise ValueError("fxquant.explore measures sensitivities: method='paper' has no budget mode; "
                         "use method='sensitivity' (or 'auto')")
    cfg = dataclasses.replace(cfg, method="sensitivity")
    if fxdist.process_group_ready() or fxdist.torchrun_env() is not None:
        log.warning("fxquant.explore runs in one process: under torch.distributed every rank measures the whole "
                    "model (use fxquant.compress(..., target_bits=B) to split the calibration batches)")
    oracle = make_oracle(calib_loader, oracle, dtype)
    if verbose:
        ensure_progress_output()
    prep = prepare_search(model, cfg, oracle, calib_loader=calib_loader, stats_loader=stats_loader,
                          filter_fn=filter_fn, keep_8bit=keep_8bit, leaf_modules=leaf_modules, mapping=mapping,
                          dtype=dtype)
    if not prep.chosen:
        raise ValueError("no layers to search: the filter excluded every layer")
    # As compress: the quantizer's statistics (measured while preparing) count as search time.
    t0 = time.perf_counter() - prep.quantizer.setup_seconds
    m = measure(prep.gm, oracle, cfg, all_layers=prep.layers, layers=prep.chosen, keep_8bit=prep.keep,
                quantizer=prep.quantizer, inputs=prep.sensitivity_inputs, verbose=verbose, t0=t0)
    return Exploration(m, prep.layers, mapping)
