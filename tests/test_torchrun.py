"""Under ``torchrun``, ``fxquant.compress`` starts (and ends) the process group itself (issue 18 item 9).

Two gloo processes launched by ``python -m torch.distributed.run --standalone --nproc_per_node 2`` on
``tests/torchrun_worker.py`` (which never calls ``init_process_group``) give the single-process
result; only rank 0 logs; no process group is left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import fxquant
from fxquant.engine import distributed as fxdist
from tests.models import ZOO, labelled_batches

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = dict(method="paper", margin="fixed", t_init=3.0)
_TORCHRUN = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


def calib():
    return labelled_batches("tiny_vit", n=80)


def summary(q) -> dict:
    r = q.meta["fxquant"]
    probe = torch.randn(8, *ZOO["tiny_vit"][1][1:], generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        out = q(probe)
    return {"bits": r.bits, "values": (r.float_value, r.baseline_value, r.final_value), "calls": r.oracle_calls,
            "decisions": [(d.name, d.bits, d.threshold, d.accuracy) for d in r.decisions], "output": out}


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo backend")
def test_torchrun_without_user_initialisation_matches_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             "2", str(ROOT / "tests" / "torchrun_worker.py"), str(tmp_path)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, batches = calib()
        single = summary(fxquant.compress(model, batches, verbose=False, distributed=False, **SCENARIO))
    finally:
        torch.set_num_threads(threads)
    try:
        log = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("torchrun workers hung")
    assert proc.returncode == 0, log[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for got in ranks:
        assert not got["group_left"]  # fxquant destroyed the group it created
        for key in ("bits", "values", "calls", "decisions"):
            assert got["summary"][key] == single[key], key
        assert torch.equal(got["summary"]["output"], single["output"])
    assert [r["main"] for r in ranks] == [True, False]
    assert any("bits" in m for m in ranks[0]["logs"]) and ranks[1]["logs"] == []  # only rank 0 logs
    assert len(set(single["bits"].values())) > 1  # a search with something to decide


def test_distributed_true_without_torchrun_or_group_is_a_clear_error(monkeypatch):
    for key in _TORCHRUN:
        monkeypatch.delenv(key, raising=False)
    model, batches = calib()
    with pytest.raises(ValueError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT"):
        fxquant.compress(model, batches, distributed=True, verbose=False)
    monkeypatch.setenv("RANK", "0")  # a partial torchrun environment is not one
    with pytest.raises(ValueError, match="torchrun"):
        fxquant.compress(model, batches, distributed=True, verbose=False)
    assert fxdist.torchrun_env() is None and fxdist.is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not fxdist.is_main_process()


def test_a_single_process_torchrun_environment_starts_no_group(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")  # nothing listens: a rendezvous would fail
    with fxdist.session(None) as comm:
        assert comm is None and not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        with fxdist.session(None):
            pass
