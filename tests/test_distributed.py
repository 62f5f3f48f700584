"""The search over torch.distributed (gloo, CPU) gives the single-process result.

``test_two_gloo_processes_match_one`` starts this file twice as a script (ranks
0 and 1, one thread each, a file-store rendezvous, no torchrun), runs every
scenario of :data:`SCENARIOS` in both and compares with a single process.

"Identical" means: the same bit-widths, float/baseline/final values, oracle
calls, per-layer thresholds and accuracies, the same (bits, complete) sequence
of tried widths with the same value for every complete evaluation, and the same
outputs of the compressed model. An evaluation stopped early reports an upper
bound; N processes check the stop every N batches, so theirs may be lower
(tighter) than one process's, never higher, and is still below the threshold.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # started as a worker: make `fxquant` and `tests` importable
    sys.path.insert(0, str(ROOT))

import fxquant  # noqa: E402
from fxquant.engine.distributed import resolve, shard_indices  # noqa: E402
from tests.models import ZOO, labelled_batches  # noqa: E402

SCENARIOS = {  # name: (model of tests/models.py, compress options)
    "vit_fast_hardest_first": ("tiny_vit", dict(method="paper", margin="fixed", t_init=3.0)),
    "vit_naive_user_order_bisect": ("tiny_vit", dict(method="paper", margin="fixed", t_init=3.0, evaluation="naive",
                                                     hardest_first=False, strategy="bisect")),
    "spectral_adaptive_keep_8bit": ("spectral1d", dict(t_init=20.0, candidates=(1, 2, 4, 8),
                                                       keep_8bit=["c1"])),
}


def _calib(name: str = "tiny_vit"):
    """7 batches (6 of 16, one of 10): an odd count, so the ranks get unequal shares."""
    return labelled_batches(name, n=106)


def _weight_error_oracle(reference):
    ref = {k: v.clone() for k, v in reference.state_dict().items() if k.endswith("weight")}

    def oracle(model):
        sd = model.state_dict()
        return 100.0 - sum(100 * float((sd[k] - v).norm() / v.norm()) for k, v in ref.items() if k in sd)

    return oracle


def _summary(q, name: str) -> dict:
    r = q.meta["fxquant"]
    probe = torch.randn(8, *ZOO[name][1][1:], generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        out = q(probe)
    return {"bits": r.bits, "float": r.float_value, "baseline": r.baseline_value, "final": r.final_value,
            "calls": r.oracle_calls, "evaluation": r.evaluation, "output": out,
            "decisions": [(d.name, d.bits, d.threshold, d.accuracy, [(b, full) for b, _, full in d.tried])
                          for d in r.decisions],
            "values": [[(v, full) for _, v, full in d.tried] for d in r.decisions]}


def run_scenarios(distributed: bool) -> dict:
    out = {}
    for scenario, (name, kw) in SCENARIOS.items():
        model, calib = _calib(name)
        q = fxquant.compress(model, calib, verbose=False, distributed=distributed, **kw)
        out[scenario] = _summary(q, name)
    model, _ = _calib("tiny_vit")
    out["user_oracle"] = _summary(fxquant.compress(model, oracle=_weight_error_oracle(model), t_init=5.0,
                                                   verbose=False, distributed=distributed), "tiny_vit")
    return out


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = run_scenarios(distributed=True)
        model, calib = _calib()
        errors = {}
        # Rank 1 passes one batch less: every rank must refuse, none may hang.
        mismatched = calib if rank == 0 else calib[:-1]
        nan_on_rank0 = dict(oracle=lambda m: float("nan") if rank == 0 else 50.0)
        for label, data, kw in (("mismatch", mismatched, {}), ("too_few", [calib[0]], {}),
                                ("oracle_fails_on_rank0", None, nan_on_rank0)):
            try:
                fxquant.compress(model, data, verbose=False, **kw)
                errors[label] = None
            except ValueError as e:
                errors[label] = str(e)
        results["errors"] = errors
        torch.save(results, out)
    finally:
        dist.destroy_process_group()


gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                          reason="torch.distributed with the gloo backend is not available")


@gloo
def test_two_gloo_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), "2", str(tmp_path / "store"),
                               str(tmp_path / f"rank{rank}.pt")], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference under the same thread count as the workers
    try:
        single = run_scenarios(distributed=False)
    finally:
        torch.set_num_threads(threads)
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a distributed worker hung")
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert time.perf_counter() - t0 < 60

    for name, ref in single.items():
        for rank in ranks:
            got = rank[name]
            for key in ("bits", "float", "baseline", "final", "calls", "evaluation", "decisions"):
                assert got[key] == ref[key], (name, key)
            assert torch.equal(got["output"], ref["output"]), name
            for layer_ref, layer_got in zip(ref["values"], got["values"]):
                for (v1, full), (vn, _) in zip(layer_ref, layer_got):
                    assert vn == v1 if full else vn <= v1, name
        assert ranks[0][name]["values"] == ranks[1][name]["values"]  # the ranks agree on every value
    # The scenarios exercise what they claim: early stops, non-trivial widths, both paths.
    fast = single["vit_fast_hardest_first"]
    assert fast["evaluation"] == "fast" and single["vit_naive_user_order_bisect"]["evaluation"] == "naive"
    assert any(not full for d in fast["decisions"] for _, full in d[4])
    assert len(set(fast["bits"].values())) > 1
    for rank in ranks:
        assert "differs between the distributed processes" in rank["errors"]["mismatch"]
        assert "1 batch(es) for 2 processes" in rank["errors"]["too_few"]
    assert "nan" in ranks[0]["errors"]["oracle_fails_on_rank0"]
    assert "failed on rank 0" in ranks[1]["errors"]["oracle_fails_on_rank0"]


def test_distributed_true_without_a_process_group_says_how():
    model, calib = _calib()
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="torchrun.*init_process_group"):
        fxquant.compress(model, calib, distributed=True, verbose=False)
    with pytest.raises(ValueError, match="distributed must be None"):
        fxquant.compress(model, calib, distributed="yes", verbose=False)
    assert resolve(None) is None and resolve(False) is None


@pytest.mark.parametrize("count", [0, 1, 5, 7, 8])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_index_once(count, world):
    shares = [shard_indices(count, r, world) for r in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard_indices(count, world, world)


@gloo
def test_one_process_group_is_detected_and_changes_nothing(tmp_path, caplog):
    model, calib = _calib()
    alone = fxquant.compress(model, calib, method="paper", margin="fixed", t_init=3.0, verbose=False).meta["fxquant"]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with caplog.at_level(logging.INFO, logger="fxquant"):
            auto = fxquant.compress(model, calib, method="paper", margin="fixed", t_init=3.0,
                                    verbose=False).meta["fxquant"]
            fxquant.compress(model, oracle=_weight_error_oracle(model), verbose=False)
        off = fxquant.compress(model, calib, method="paper", margin="fixed", t_init=3.0, verbose=False,
                               distributed=False).meta["fxquant"]
    finally:
        dist.destroy_process_group()
    assert auto.bits == alone.bits == off.bits and auto.decisions == alone.decisions
    assert auto.layer_forwards == alone.layer_forwards
    assert any("cannot be sharded" in r.getMessage() for r in caplog.records)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
