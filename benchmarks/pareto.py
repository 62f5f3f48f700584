#!/usr/bin/env python
"""Pareto benchmark (issue 15): held-out accuracy vs average bits over calibration draws, per method.

From the repository root (checkpoints from ``examples/eurosat/train.py``)::

    OMP_NUM_THREADS=2 python benchmarks/pareto.py --model resnet18 --threads 2
    OMP_NUM_THREADS=2 python benchmarks/pareto.py --model resnet50 --threads 2
    python benchmarks/pareto.py --report          # only regenerate pareto.md / pareto.png from the JSON
    OMP_NUM_THREADS=1 python benchmarks/pareto.py --model resnet18 --limit 64 --draws 1 --budgets 2 \\
        --out /tmp/pareto-smoke            # pipeline check (tiny subsets; never into docs/results)

Methods (``--methods``): ``uniform`` (every layer at 1..6 and 8 bits), ``paper_fixed`` /
``paper_adaptive`` (the paper's greedy, T_init 0.5), ``hawq`` / ``zeroq`` (baselines in
``benchmarks/baselines.py``, knapsack at each budget), ``fxquant_budget``
(``compress(target_bits=B)``, run as ``fxquant.explore(...).compress(target_bits=B)``: the
same model from one measurement per draw; each row's search seconds count that measurement)
and ``fxquant_accuracy`` (``method="sensitivity"``, T_init 0.5).
Every method uses the same quantizer (GPTQ + bias correction, statistics from 1,024
training images disjoint from the draw's calibration images), so only the allocation
differs. Draw ``d`` takes its 2,000 calibration images from the training split with
seed ``d`` (draw 0 is the subset of ``examples/eurosat/table1.py``); the test split is
never seen by any method.

Every row is stored in ``<out>/pareto.json`` as soon as it is computed and a rerun
skips the rows already there, so an interrupted run resumes. Run the models one after
another (they share the file). The report (``pareto_report.py``) is regenerated at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import json
import os
import sys
import time
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import torch  # noqa: E402

import fxquant  # noqa: E402
from benchmarks import baselines, pareto_report  # noqa: E402

SCHEMA = pareto_report.SCHEMA
RESULTS_DIR = _REPO_ROOT / "docs" / "results"
T_INIT = 0.5
BUDGETS = (1.5, 2.0, 2.5, 3.0, 4.0)
UNIFORM_BITS = (1, 2, 3, 4, 5, 6, 8)
METHODS = ("uniform", "paper_fixed", "paper_adaptive", "hawq", "zeroq", "fxquant_budget", "fxquant_accuracy")
BUDGETED = {"hawq", "zeroq", "fxquant_budget"}
CALIB_SIZE, STATS_SIZE = 2000, 1024


def plan(methods, budgets, draws) -> list[tuple[str, str, int, float | int | None]]:
    """``(key, method, draw, budget or width)`` of every row, draws outermost (a cut run has whole draws)."""
    out = []
    for d in draws:
        for m in methods:
            if m == "uniform":
                out += [(f"uniform/w{b}/draw{d}", m, d, b) for b in UNIFORM_BITS]
            elif m in BUDGETED:
                out += [(f"{m}/b{b:g}/draw{d}", m, d, b) for b in budgets]
            else:
                out.append((f"{m}/acc/draw{d}", m, d, None))
    return out


def draw_indices(splits, seed: int, d: int, n_calib: int = CALIB_SIZE, n_stats: int = STATS_SIZE) -> tuple:
    """(calibration, statistics) training-image indices of draw ``d``: stratified, disjoint."""
    from fxquant.data.eurosat import calibration_indices

    labels, train_idx = splits.arrays.labels, splits.train_idx
    calib_idx = calibration_indices(labels, train_idx, n_calib, seed + d)
    rest = train_idx[~torch.isin(train_idx, calib_idx)]
    return calib_idx, calibration_indices(labels, rest, n_stats, seed + d + 1)


def measure(gm, test) -> dict:
    rep = fxquant.report(gm)
    fxquant.set_weight_cache(gm, True)  # float-speed forwards: the test pass is the slow part
    return {"test_acc": test(gm), "avg_bits": rep.average_bits, "packed_bytes": rep.packed_bytes,
            "grid_bytes": rep.grid_bytes, "layer_bits": {lay.name: lay.bits for lay in rep.layers}}


class Draw:
    """One calibration draw: its loaders, and lazily its prepared quantizer, baseline sensitivities and
    fxquant's budget-mode measurement (``fxquant.explore``: every budget from one measurement)."""

    def __init__(self, model, calib, stats, verbose: bool, quant: fxquant.QuantConfig):
        self.model, self.calib, self.stats, self.verbose, self.quant = model, calib, stats, verbose, quant
        self._prep = None
        self._sens: dict[str, tuple[dict, float]] = {}
        self._explored: fxquant.Exploration | None = None

    @property
    def explored(self) -> fxquant.Exploration:
        if self._explored is None:
            self._explored = fxquant.explore(self.model, self.calib, stats_loader=self.stats, verbose=self.verbose,
                                             quant=self.quant)
        return self._explored

    def close(self) -> None:
        if self._explored is not None:
            self._explored.close()

    @property
    def prep(self) -> baselines.Prepared:
        if self._prep is None:
            self._prep = baselines.prepare(self.model, self.stats, self.quant)
        return self._prep

    def sensitivity(self, method: str) -> tuple[dict, float]:
        if method not in self._sens:
            fn = baselines.hawq_sensitivity if method == "hawq" else baselines.zeroq_sensitivity
            sens, seconds = fn(self.prep, self.calib)
            self._sens[method] = (sens, seconds + self.prep.setup_seconds)
        return self._sens[method]


def compute_row(method: str, value, draw: Draw, test) -> dict:
    t0 = time.perf_counter()
    row: dict = {"method": method}
    if method == "uniform":
        gm = baselines.build(draw.prep, {lay.name: value for lay in draw.prep.layers})
        row.update(width=value, search_seconds=0.0)
    elif method in ("hawq", "zeroq"):
        sens, seconds = draw.sensitivity(method)
        t1 = time.perf_counter()
        bits = baselines.knapsack_bits(draw.prep, sens, value)
        gm = baselines.build(draw.prep, bits)
        row.update(budget=value, search_seconds=seconds + time.perf_counter() - t1)
    else:
        if method == "fxquant_budget":  # = compress(target_bits=value), measured once per draw
            gm = draw.explored.compress(target_bits=value)
        else:
            options = {"paper_fixed": dict(method="paper", margin="fixed", t_init=T_INIT),
                       "paper_adaptive": dict(method="paper", margin="adaptive", t_init=T_INIT),
                       "fxquant_accuracy": dict(method="sensitivity", t_init=T_INIT)}[method]
            gm = fxquant.compress(draw.model, draw.calib, stats_loader=draw.stats, verbose=draw.verbose,
                                  quant=draw.quant, **options)
        rep = fxquant.report(gm)
        row.update(search_seconds=rep.seconds, calib_float=rep.float_value, calib_final=rep.final_value,
                   oracle_calls=rep.oracle_calls)
        if value is not None:
            row["budget"] = value
    row["wall_seconds"] = time.perf_counter() - t0
    row.update(measure(gm, test))
    return row


def write_json(path: Path, data: dict) -> None:
    """Atomic replace: a run cut mid-write must not lose the rows already stored."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def open_results(path: Path) -> dict:
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            raise SystemExit(f"{path} is not a {SCHEMA} file; move it away or pass --out elsewhere")
        return data
    return {"schema": SCHEMA, "models": {}}


def run(name: str, model, draws: dict[int, tuple], test, *, methods, budgets, path: Path, setup: dict,
        quant: fxquant.QuantConfig | None = None, float_acc: float | None = None, verbose: bool = False,
        log=print) -> dict:
    """Compute (or resume) every row of ``name``; ``draws`` maps draw -> (calib, stats) loaders.

    ``quant`` (default ``QuantConfig()``) is every method's quantizer; its settings are part of ``setup``.
    """
    quant = quant or fxquant.QuantConfig()
    setup = {**setup, "quant": dataclasses.asdict(quant)}
    data = open_results(path)
    entry = data["models"].setdefault(name, {"setup": setup, "rows": {}})
    if entry.get("setup") != setup:
        diff = sorted(k for k in set(setup) | set(entry["setup"]) if setup.get(k) != entry["setup"].get(k))
        raise SystemExit(f"{path} holds {name} rows made with a different setup (differs in {diff}); "
                         "pass --fresh to start this model over or --out elsewhere")
    if "float_test_acc" not in entry:
        entry["float_test_acc"] = test(model) if float_acc is None else float_acc
        write_json(path, data)
    provenance = {"threads": torch.get_num_threads(), "torch_version": str(torch.__version__),
                  "fxquant_version": fxquant.__version__}
    cache: dict[int, Draw] = {}
    try:
        for key, method, d, value in plan(methods, budgets, sorted(draws)):
            if key in entry["rows"]:
                continue
            if d not in cache:
                for old in cache.values():
                    old.close()
                cache.clear()  # one draw's statistics and activations in memory at a time
                cache[d] = Draw(model, *draws[d], verbose, quant)
            row = compute_row(method, value, cache[d], test)
            row.update(draw=d, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       **provenance)
            data = open_results(path)  # another model's run may have written meanwhile
            data["models"].setdefault(name, entry)["rows"][key] = row
            entry = data["models"][name]
            write_json(path, data)
            log(f"{name} {key}: test {row['test_acc']:.2f}% at {row['avg_bits']:.3f} bits, "
                f"search {row['search_seconds']:.1f} s")
    finally:
        for old in cache.values():
            old.close()
    return data


def supersede(data: dict, name: str, patterns: list[str], label: str, note: str | None) -> int:
    """Move ``name``'s rows matching ``patterns`` to the entry ``"<name> [<label>]"``; returns how many moved."""
    entry = data["models"].get(name)
    if entry is None:
        return 0
    moved = {k: r for k, r in entry["rows"].items() if any(fnmatch.fnmatchcase(k, pat) for pat in patterns)}
    if not moved:
        return 0
    old = data["models"].setdefault(f"{name} [{label}]", {"setup": entry["setup"], "rows": {},
                                                           "float_test_acc": entry["float_test_acc"]})
    if old["setup"] != entry["setup"]:
        raise SystemExit(f"the entry {name} [{label}] holds rows of another setup; choose another --as label")
    clash = sorted(set(moved) & set(old["rows"]))
    if clash:  # e.g. the same command run again to resume: the kept rows must not be replaced
        raise SystemExit(f"the entry {name} [{label}] already holds {clash[0]}"
                         + (f" and {len(clash) - 1} more" if len(clash) > 1 else "")
                         + "; to resume a run, drop --supersede")
    if note:
        old["note"] = note
    old["rows"].update(moved)
    for k in moved:
        del entry["rows"][k]
    return len(moved)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["resnet18", "resnet50"])
    p.add_argument("--draws", type=int, default=5, help="calibration draws 0..N-1 (default 5)")
    p.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS), help="comma list of average bits")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of: {', '.join(METHODS)}")
    p.add_argument("--limit", type=int, default=None,
                   help="smoke run: at most N test, calibration and statistics images (needs --out)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--root", default=None, help="EuroSAT root (default ../shared/data)")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--fresh", action="store_true", help="discard this model's stored rows")
    p.add_argument("--supersede", action="append", default=[], metavar="PATTERN",
                   help="recompute this model's rows whose key matches the glob (e.g. 'fxquant_accuracy/*'); "
                        "the old rows move to the entry '<model> [<--as>]', kept for comparison")
    p.add_argument("--as", dest="superseded_as", default=None, metavar="LABEL",
                   help="with --supersede: the label of the entry the old rows move to")
    p.add_argument("--note", default=None, help="with --supersede: a note shown with the old rows")
    p.add_argument("--binary-scale", choices=["mean", "max"], default="mean",
                   help="the quantizer's 1-bit scale (QuantConfig.binary_scale); rows of a non-default "
                        "choice are stored under '<model> [binary_scale=...]'")
    p.add_argument("--report", action="store_true", help="only regenerate the markdown and the figure")
    p.add_argument("--verbose", action="store_true", help="per-layer search progress")
    args = p.parse_args(argv)
    if not args.report and args.model is None:
        p.error("--model is required (or --report)")
    if args.limit is not None and args.out.resolve() == RESULTS_DIR.resolve():
        p.error("--limit runs never go to docs/results: pass --out")
    if bool(args.supersede) != bool(args.superseded_as):
        p.error("--supersede and --as go together (the old rows are kept under a label)")
    if args.note and not args.supersede:
        p.error("--note labels the rows --supersede moves; give --supersede too")
    args.budgets = tuple(float(b) for b in args.budgets.split(",") if b.strip())
    args.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "pareto.json"
    if not args.report:
        from examples.eurosat.common import checkpoint_path, load_trained
        from fxquant.data.eurosat import eurosat_available, eurosat_splits

        if args.threads:
            torch.set_num_threads(args.threads)
        if not eurosat_available(args.root):
            raise SystemExit("EuroSAT not found: pass --root or set FXQUANT_EUROSAT_ROOT")
        ckpt = args.checkpoint or checkpoint_path(args.model)
        model, meta = load_trained(args.model, path=ckpt)
        seed = meta.get("split_seed", 0)
        splits = eurosat_splits(args.root, seed=seed)
        train_idx, test_idx = splits.train_idx, splits.test_idx
        n_calib, n_stats = (min(args.limit, CALIB_SIZE), min(args.limit, STATS_SIZE)) if args.limit \
            else (CALIB_SIZE, STATS_SIZE)
        if args.limit:
            gen = torch.Generator().manual_seed(seed)
            test_idx = test_idx[torch.randperm(test_idx.numel(), generator=gen)[:args.limit]].sort().values
        draws = {}
        for d in range(args.draws):
            calib_idx, stats_idx = draw_indices(splits, seed, d, n_calib, n_stats)
            assert not set(stats_idx.tolist()) & set(calib_idx.tolist())
            draws[d] = (splits.loader(calib_idx), splits.loader(stats_idx))
        assert not set(test_idx.tolist()) & set(train_idx.tolist())
        test = fxquant.AccuracyOracle(splits.loader(test_idx))
        setup = {"split_seed": seed, "n_test": int(test_idx.numel()), "n_calib": n_calib, "n_stats": n_stats,
                 "t_init": T_INIT, "checkpoint": ckpt.name, "checkpoint_test_acc": meta.get("test_acc"),
                 "limit": args.limit}
        quant = fxquant.QuantConfig(binary_scale=args.binary_scale)
        name = args.model if quant == fxquant.QuantConfig() else f"{args.model} [binary_scale={args.binary_scale}]"
        if args.fresh and path.is_file():
            data = open_results(path)
            data["models"].pop(name, None)
            write_json(path, data)
        if args.supersede and path.is_file():
            data = open_results(path)
            n = supersede(data, name, args.supersede, args.superseded_as, args.note)
            write_json(path, data)
            print(f"moved {n} row(s) of {name} to '{name} [{args.superseded_as}]'", flush=True)
        print(f"{args.model}: {test_idx.numel()} test images, draws {sorted(draws)}, {n_calib} calibration + "
              f"{n_stats} statistics images per draw, threads {torch.get_num_threads()} -> {path}", flush=True)
        run(name, model, draws, test, methods=args.methods, budgets=args.budgets, path=path, setup=setup,
            quant=quant, verbose=args.verbose, log=lambda s: print(s, flush=True))
    print(pareto_report.write_report(path, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
