#!/usr/bin/env python
"""Accuracy-mode study (issue 15): what each calibration draw's statistics say along the frontier.

Accuracy mode (``compress(method="sensitivity")``) walks the size/sensitivity
frontier and keeps the smallest point the oracle accepts. Its average bits
spread 1.25-1.85 over five calibration draws of the EuroSAT ResNet18 while
every point in that range was within 0.3 points of float on test. This script
records, per draw, the statistics any acceptance rule could use at points along
that draw's own frontier, so rules can be compared on the same data without
rerunning the model (``--analyse``):

* the frontier exactly as accuracy mode builds it (sensitivities on the draw's
  first 512 content-ordered calibration images, extrapolated as the search does);
* at each point (the knapsack optimum at average bits 1.0, 1.1, ..., 2.2):
  calibration top-1, and three smooth statistics on all 2,000 calibration images:
  mean KL(float || quantized), mean drop of the true class's probability, and
  the top-1 disagreement with the float model; and the held-out test top-1.
  (The search itself computes its KL on the 512 sensitivity images, rounded to 5
  digits; the replay uses the 2,000-image value.)

Draws 5-7 by default: rules are designed on these and checked on the Pareto
benchmark's draws 0-4, so the check is not on the data the rule was chosen on.

    OMP_NUM_THREADS=2 python benchmarks/accuracy_mode_study.py --threads 2
    python benchmarks/accuracy_mode_study.py --analyse
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import torch  # noqa: E402

import fxquant  # noqa: E402
from benchmarks import baselines  # noqa: E402
from fxquant.core.allocate import pareto_frontier  # noqa: E402
from fxquant.core.calibration import calibration_inputs  # noqa: E402
from fxquant.passes.sensitivity import extrapolate, measure_sensitivity  # noqa: E402

RESULTS = _REPO_ROOT / "docs" / "results" / "accuracy_mode_study.json"
GRID = tuple(round(1.0 + 0.1 * i, 1) for i in range(13))  # 1.0 .. 2.2 average bits
CALIB_SIZE, STATS_SIZE, SAMPLES = 2000, 1024, 512


@torch.no_grad()
def outputs(model, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities [N, C] in float64, labels [N]) over ``batches``."""
    logp, ys = [], []
    for x, y in batches:
        logp.append(torch.log_softmax(model(x).double(), dim=1))
        ys.append(y)
    return torch.cat(logp), torch.cat(ys)


def statistics(ref: torch.Tensor, logq: torch.Tensor, y: torch.Tensor) -> dict:
    """Top-1 (%), and the smooth statistics of ``logq`` against the float model's ``ref``."""
    p = ref.exp()
    true = torch.arange(len(y))
    return {"top1": 100.0 * float((logq.argmax(1) == y).double().mean()),
            "kl": float((p * (ref - logq)).sum(1).clamp_min(0).mean()),
            "soft_drop": 100.0 * float((p[true, y] - logq.exp()[true, y]).mean()),
            "disagree": 100.0 * float((logq.argmax(1) != ref.argmax(1)).double().mean())}


def study_draw(model, calib, stats, test, log=print) -> dict:
    t0 = time.perf_counter()
    prep = baselines.prepare(model, stats, fxquant.QuantConfig())
    inputs = calibration_inputs(calib, 1 << 62)
    measured, _, sens_s = measure_sensitivity(prep.gm, prep.layers, prep.quantizer, inputs, baselines.CANDIDATES,
                                              samples=SAMPLES)
    prep.quantizer.restore()
    sens = {name: extrapolate(m, baselines.CANDIDATES) for name, m in measured.items()}
    cands = baselines.CANDIDATES
    total = sum(lay.params for lay in prep.layers)
    front = pareto_frontier([[sens[lay.name][b] for b in cands] for lay in prep.layers],
                            [[lay.params * b for b in cands] for lay in prep.layers])
    calib_batches = [(x, y) for x, y in calib]
    test_batches = fxquant.AccuracyOracle(test).batches
    ref_c, y_c = outputs(prep.gm, calib_batches)
    ref_t, y_t = outputs(prep.gm, test_batches)
    out = {"sensitivity": measured, "sensitivity_seconds": sens_s,
           "float": {"calib": statistics(ref_c, ref_c, y_c), "test": statistics(ref_t, ref_t, y_t)},
           "frontier_size": len(front.points), "points": []}
    for target in GRID:
        budget = math.floor(Fraction(target).limit_denominator() * total)
        point = front.best_within(budget)
        bits = {lay.name: cands[o] for lay, o in zip(prep.layers, point.choice)}
        gm = baselines.build(prep, bits)
        fxquant.set_weight_cache(gm, True)
        rec = {"target": target, "avg_bits": point.size / total, "sensitivity_sum": point.cost, "bits": bits,
               "calib": statistics(ref_c, outputs(gm, calib_batches)[0], y_c),
               "test": statistics(ref_t, outputs(gm, test_batches)[0], y_t)}
        out["points"].append(rec)
        log(f"  {target:.1f}: {rec['avg_bits']:.3f} bits, calib {rec['calib']['top1']:.2f}% "
            f"kl {rec['calib']['kl']:.4f} test {rec['test']['top1']:.2f}%")
    out["seconds"] = time.perf_counter() - t0
    return out


def draw_loaders(splits, seed: int, d: int) -> tuple:
    """(calibration, statistics, test) loaders of calibration draw ``d``, as ``benchmarks/pareto.py`` draws them."""
    from benchmarks.pareto import draw_indices

    calib_idx, stats_idx = draw_indices(splits, seed, d, CALIB_SIZE, STATS_SIZE)
    return splits.loader(calib_idx), splits.loader(stats_idx), splits.loader(splits.test_idx)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"])
    p.add_argument("--draws", default="5,6,7", help="comma list of calibration draws (seeds)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--root", default=None)
    p.add_argument("--analyse", action="store_true",
                   help="only replay the rules on the JSON (writes the .md beside it)")
    args = p.parse_args(argv)
    if args.analyse:
        from benchmarks.accuracy_mode_rules import report

        text = report(json.loads(args.out.read_text()))
        args.out.with_suffix(".md").write_text(text)
        print(text)
        return 0
    from examples.eurosat.common import checkpoint_path, load_trained
    from fxquant.data.eurosat import eurosat_splits

    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = checkpoint_path(args.model)
    model, meta = load_trained(args.model, path=ckpt)
    seed = meta.get("split_seed", 0)
    splits = eurosat_splits(args.root, seed=seed)
    data = json.loads(args.out.read_text()) if args.out.is_file() else {
        "model": args.model, "checkpoint_test_acc": meta.get("test_acc"), "grid": GRID, "draws": {}}
    if data.get("checkpoint_test_acc") != meta.get("test_acc"):
        raise SystemExit(f"{args.out} was measured on another checkpoint; move it away")
    for d in (int(s) for s in args.draws.split(",") if s.strip()):
        if str(d) in data["draws"]:
            continue
        print(f"draw {d}", flush=True)
        data["draws"][str(d)] = study_draw(model, *draw_loaders(splits, seed, d), log=lambda s: print(s, flush=True))
        write_json(args.out, data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
