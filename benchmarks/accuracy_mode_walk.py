#!/usr/bin/env python
"""Accuracy-mode study on the search's own walk (issue 15): every walk point, with both KLs.

``accuracy_mode_study.py`` records statistics on a coarse grid (0.1 bits); the
search chooses among frontier points about 0.05 bits apart, and its spread over
calibration draws comes from how it measures the drop-per-KL *rate* on a few of
them. This script records, per calibration draw, exactly the walk accuracy mode
builds (``passes.sensitivity_search``: the frontier thinned to ``WALK_STEP``), and
at every walk point up to ``--max-bits`` average bits:

* calibration top-1 (the oracle's value), held-out test top-1;
* the whole model's mean KL(float || point) on the 512 sensitivity images (what
  the search used before this study) and on all 2,000 calibration images (what it
  uses now), and on test.

Per-image arrays (calibration correctness and KL, test correctness) go to
``~/.cache/fxquant/study/`` for resampling studies; the JSON holds the
aggregates. ``--analyse`` replays the rules of ``accuracy_mode_rules.walk_report``.

    OMP_NUM_THREADS=2 python benchmarks/accuracy_mode_walk.py --threads 2 --draws 5,6,7,8,9
    python benchmarks/accuracy_mode_walk.py --analyse
"""

from __future__ import annotations

import argparse
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
from benchmarks import baselines  # noqa: E402
from benchmarks.accuracy_mode_study import SAMPLES, draw_loaders, outputs, write_json  # noqa: E402
from fxquant.core.allocate import pareto_frontier  # noqa: E402
from fxquant.core.calibration import calibration_inputs  # noqa: E402
from fxquant.passes.sensitivity import canonical_batches, extrapolate, measure_sensitivity  # noqa: E402
from fxquant.passes.sensitivity_search import WALK_STEP, _thin  # noqa: E402

RESULTS = _REPO_ROOT / "docs" / "results" / "accuracy_mode_walk.json"
CACHE = Path(os.environ.get("FXQUANT_CACHE", Path.home() / ".cache" / "fxquant")) / "study"


def per_image(ref: torch.Tensor, logq: torch.Tensor, y: torch.Tensor | None):
    """(correct [N] bool or None, KL(float || q) [N]) of log-probabilities ``logq`` against ``ref``."""
    kl = (ref.exp() * (ref - logq)).sum(1).clamp_min(0)
    return (None if y is None else logq.argmax(1) == y), kl


def walk_draw(model, calib, stats, test, max_bits: float, log=print) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    prep = baselines.prepare(model, stats, fxquant.QuantConfig())
    inputs = calibration_inputs(calib, 1 << 62)
    cands = baselines.CANDIDATES
    measured, _, sens_s = measure_sensitivity(prep.gm, prep.layers, prep.quantizer, inputs, cands, samples=SAMPLES)
    prep.quantizer.restore()
    sens = {name: extrapolate(m, cands) for name, m in measured.items()}
    total = sum(lay.params for lay in prep.layers)
    points = pareto_frontier([[sens[lay.name][b] for b in cands] for lay in prep.layers],
                             [[lay.params * b for b in cands] for lay in prep.layers]).points
    span = (points[-1].size - points[0].size) / (WALK_STEP * total)
    walk = _thin(points, max(2, min(256, int(span) + 1)))  # as sensitivity_search builds it
    calib_batches = [(x, y) for x, y in calib]
    test_batches = fxquant.AccuracyOracle(test).batches
    sens_batches = [(x, None) for x in canonical_batches(inputs, SAMPLES)]
    ref_c, y_c = outputs(prep.gm, calib_batches)
    ref_t, y_t = outputs(prep.gm, test_batches)
    ref_s = torch.cat([torch.log_softmax(prep.gm(x).double(), 1) for x, _ in sens_batches])
    fc, ft = (ref_c.argmax(1) == y_c), (ref_t.argmax(1) == y_t)
    out = {"sensitivity_seconds": sens_s, "walk_size": len(walk),
           "float": {"calib_top1": 100.0 * float(fc.double().mean()), "test_top1": 100.0 * float(ft.double().mean())},
           "points": []}
    arrays = {"calib_float_correct": fc, "test_float_correct": ft, "points": []}
    for pos, i in enumerate(walk):
        avg = points[i].size / total
        if avg > max_bits + 1e-9:
            break
        bits = {lay.name: cands[o] for lay, o in zip(prep.layers, points[i].choice)}
        gm = baselines.build(prep, bits)
        fxquant.set_weight_cache(gm, True)
        with torch.no_grad():
            cc, kc = per_image(ref_c, outputs(gm, calib_batches)[0], y_c)
            tc, kt = per_image(ref_t, outputs(gm, test_batches)[0], y_t)
            _, ks = per_image(ref_s, torch.cat([torch.log_softmax(gm(x).double(), 1) for x, _ in sens_batches]), None)
        rec = {"walk_pos": pos, "frontier_index": i, "avg_bits": avg,
               "calib_top1": 100.0 * float(cc.double().mean()), "test_top1": 100.0 * float(tc.double().mean()),
               "kl_sens": float(ks.mean()), "kl_calib": float(kc.mean()), "kl_test": float(kt.mean())}
        out["points"].append(rec)
        arrays["points"].append({"calib_correct": cc, "calib_kl": kc.float(), "test_correct": tc})
        log(f"  walk {pos} ({avg:.3f} bits): calib {rec['calib_top1']:.2f}% test {rec['test_top1']:.2f}% "
            f"kl sens {rec['kl_sens']:.5f} calib {rec['kl_calib']:.5f}")
    out["seconds"] = time.perf_counter() - t0
    return out, arrays


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"])
    p.add_argument("--draws", default="5,6,7,8,9", help="comma list of calibration draws (seeds)")
    p.add_argument("--max-bits", type=float, default=1.8, help="record walk points up to this average bits")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--root", default=None)
    p.add_argument("--analyse", action="store_true", help="only replay the rules on the JSON (writes the .md)")
    args = p.parse_args(argv)
    if args.analyse:
        from benchmarks.accuracy_mode_rules import walk_report, walk_resampled

        data = json.loads(args.out.read_text())
        text = walk_report(data)
        files = {d: CACHE / f"{data['model']}_walk_draw{d}.pt" for d in data["draws"]}
        if all(f.is_file() for f in files.values()):
            text += ("\n## Resampled calibration images\n\nPer-image arrays from `~/.cache/fxquant/study/`. "
                     + walk_resampled(data, {d: torch.load(f) for d, f in files.items()}))
        args.out.with_suffix(".md").write_text(text)
        print(text)
        return 0
    from examples.eurosat.common import checkpoint_path, load_trained
    from fxquant.data.eurosat import eurosat_splits

    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_trained(args.model, path=checkpoint_path(args.model))
    seed = meta.get("split_seed", 0)
    splits = eurosat_splits(args.root, seed=seed)
    data = json.loads(args.out.read_text()) if args.out.is_file() else {
        "model": args.model, "checkpoint_test_acc": meta.get("test_acc"), "walk_step": WALK_STEP,
        "samples": SAMPLES, "draws": {}}
    if data.get("checkpoint_test_acc") != meta.get("test_acc"):
        raise SystemExit(f"{args.out} was measured on another checkpoint; move it away")
    CACHE.mkdir(parents=True, exist_ok=True)
    for d in (int(s) for s in args.draws.split(",") if s.strip()):
        if str(d) in data["draws"]:
            continue
        print(f"draw {d}", flush=True)
        rec, arrays = walk_draw(model, *draw_loaders(splits, seed, d), args.max_bits,
                                log=lambda s: print(s, flush=True))
        torch.save(arrays, CACHE / f"{args.model}_walk_draw{d}.pt")
        data["draws"][str(d)] = rec
        write_json(args.out, data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
