"""Splitting the accuracy oracle's work over ``torch.distributed`` processes.

The search's cost is almost all oracle evaluations, and those split cleanly by
data: every process (rank) scores its share of the calibration batches and the
per-batch counts of correct predictions are summed with ``all_reduce``. Since
each rank then holds the same *global* counts, every rank takes the same
accept/reject decisions and ends with the same bit-widths.

:class:`Comm` is all the search needs from a process group: rank and world
size, the split of a list of batches (round robin by batch, no padding, no
duplicates: every batch is scored by exactly one rank), integer sums, a check
that every rank holds the same calibration data, and rank 0's value of a
black-box oracle. It knows nothing of FX. :func:`resolve` turns the user's
``distributed=None|True|False`` into a :class:`Comm` or ``None``; :func:`session`
does the same for one ``compress`` call and, under ``torchrun`` without a process
group, initialises one itself (gloo on CPU, nccl on CUDA) and destroys it
afterwards (only the group it created).

Every method here is a collective unless its docstring says otherwise: all
ranks must call it, in the same order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

__all__ = ["Comm", "process_group_ready", "torchrun_env", "is_main_process", "check_request", "resolve", "session",
           "shard_indices"]

log = logging.getLogger("fxquant.distributed")

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_NO_GROUP = ("distributed=True needs an initialised torch.distributed process group or the torchrun "
             "environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): launch with `torchrun` (python -m "
             "torch.distributed.run), or call torch.distributed.init_process_group() yourself, or pass "
             "distributed=False")


def process_group_ready() -> bool:
    """Whether a default ``torch.distributed`` process group is initialised (not a collective)."""
    return dist.is_available() and dist.is_initialized()


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """Indices ``rank, rank + world_size, ...`` below ``count`` (not a collective).

    Over all ranks each index appears exactly once (``DistributedSampler``'s
    round robin without its padding), so nothing is counted twice or dropped.
    Round robin rather than contiguous blocks: with batches ordered hardest
    first, step ``s`` of every rank scores global batches ``s*N .. s*N+N-1``,
    so the ranks see the same prefix of the data at each step that a single
    process sees, and an early stop comes at the same point.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
    return list(range(rank, count, world_size))


class Comm:
    """The ranks of one search, over ``group`` (default: the default process group).

    Count tensors live on the CPU for gloo (and CPU-capable multi-backend
    groups) and on the current CUDA device for nccl.
    """

    def __init__(self, group=None):
        if not process_group_ready():
            raise ValueError(_NO_GROUP)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        cuda_only = "nccl" in backend and "gloo" not in backend and "cpu" not in backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda_only else torch.device("cpu")

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs progress and writes outputs (not a collective)."""
        return self.rank == 0

    def shard(self, count: int) -> list[int]:
        """This rank's indices among ``count`` items (see :func:`shard_indices`; not a collective)."""
        return shard_indices(count, self.rank, self.world_size)

    def steps(self, count: int) -> int:
        """Rounds needed for ``count`` items split over the ranks (not a collective)."""
        return math.ceil(count / self.world_size)

    def sum_ints(self, *values: int) -> tuple[int, ...]:
        """Element-wise sum of integers over all ranks (exact: int64)."""
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return tuple(int(v) for v in t.tolist())

    def sum_disjoint(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of float tensors in which every element is non-zero on at most one rank.

        Adding exact zeros is exact in floating point, so the result holds each
        rank's values bit for bit, whatever order the backend adds in.
        """
        t = values.detach().to(self.device, copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t.to(values.device)

    def same_everywhere(self, values: Sequence[int]) -> bool:
        """Whether every rank passed the same integers."""
        t = torch.tensor([*values, *(-v for v in values)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        high, neg_low = t[:len(values)], t[len(values):]
        return bool((high == -neg_low).all())

    def check_batches(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Raise ``ValueError`` on every rank alike unless the ranks hold the same ``(inputs, targets)``
        batches (compared by count, sizes and targets) and there is a batch for every rank."""
        ys = torch.cat([y.detach().cpu().long() for _, y in batches])
        fingerprint = [len(batches), int(ys.numel()), int(ys.sum()),
                       int((ys * torch.arange(1, ys.numel() + 1)).sum()),  # order-sensitive
                       sum(int(x.numel()) for x, _ in batches)]
        if not self.same_everywhere(fingerprint):
            raise ValueError("calib_loader differs between the distributed processes: pass the same, "
                             "complete calibration data on every rank (fxquant splits it over the ranks "
                             "itself; do not use a DistributedSampler)")
        if len(batches) < self.world_size:
            raise ValueError(f"calib_loader has {len(batches)} batch(es) for {self.world_size} processes; "
                             f"use a smaller batch size so that every process scores at least one batch")

    def main_result(self, compute: Callable[[], float]) -> float:
        """Rank 0's ``compute()`` on every rank (every rank runs it: it may be a collective itself).

        An exception on rank 0 (or a NaN result) is raised on every rank (rank 0
        re-raises its own) instead of leaving the others waiting; other ranks'
        failures are ignored, since their values are not used.
        """
        try:
            local, error = float(compute()), None
        except Exception as e:  # noqa: BLE001 -- re-raised below, once the other ranks know
            local, error = math.nan, e
        t = torch.tensor([local], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=dist.get_global_rank(self.group, 0) if self.group else 0,
                             group=self.group)
        value = float(t.item())
        if math.isnan(value):
            if self.is_main and error is not None:
                raise error
            raise ValueError("the computation failed on rank 0 (see rank 0's error)")
        return value


def torchrun_env() -> dict[str, str] | None:
    """The torchrun variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) when all are set (not a collective)."""
    env = {k: os.environ.get(k) for k in TORCHRUN_VARIABLES}
    return env if all(env.values()) else None


def is_main_process() -> bool:
    """Whether this process is rank 0 (of the process group, else of torchrun's RANK; True alone).

    Use it to write files and print once, also after ``compress`` destroyed the
    process group it created (not a collective).
    """
    if process_group_ready():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")


def check_request(distributed) -> None:
    """Fail early (before any work) on a ``distributed=`` that cannot be honoured (not a collective)."""
    if distributed is not None and not isinstance(distributed, bool):
        raise ValueError(f"distributed must be None (auto), True or False, got {distributed!r}")
    if distributed is True and not process_group_ready() and torchrun_env() is None:
        raise ValueError(_NO_GROUP)


def resolve(distributed: bool | None) -> Comm | None:
    """The :class:`Comm` of an existing process group, or ``None`` for one process (not a collective).

    ``None`` (default) is distributed exactly when a process group is
    initialised; ``True`` requires one (``ValueError`` telling how to get it
    otherwise); ``False`` never distributes. :func:`session` also starts a group
    under torchrun.
    """
    check_request(distributed)
    if distributed is None:
        return Comm() if process_group_ready() else None
    return Comm() if distributed else None


def _world_size(env: dict[str, str]) -> int:
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
    except ValueError as e:
        raise ValueError(f"torchrun environment: RANK={env['RANK']!r} and WORLD_SIZE={env['WORLD_SIZE']!r} "
                         "must be integers") from e
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"torchrun environment: RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return world


@contextlib.contextmanager
def session(distributed: bool | None, *, cuda: bool = False) -> Iterator[Comm | None]:
    """:func:`resolve`, initialising the process group from the torchrun environment when there is none.

    With ``distributed=None`` or ``True``, no process group, and the torchrun
    variables set for more than one process, a group is started (``nccl`` when
    ``cuda``, the model being on a GPU; ``gloo`` otherwise) and destroyed on exit;
    a group the caller initialised is used and left alone. ``True`` without a
    group nor the torchrun environment raises ``ValueError``. A collective when
    it starts a group: every rank must enter it.
    """
    check_request(distributed)
    env = torchrun_env()
    start = (distributed is not False and not process_group_ready() and env is not None and dist.is_available()
             and (_world_size(env) > 1 or distributed is True))
    if not start:
        yield resolve(distributed)
        return
    backend = "nccl" if cuda else "gloo"
    if cuda:
        import torch.cuda

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)  # env:// rendezvous from torchrun's variables
    group = dist.group.WORLD
    log.debug("fxquant started a %s process group (rank %s of %s)", backend, env["RANK"], env["WORLD_SIZE"])
    ok = False
    try:
        yield Comm()
        ok = True
    finally:
        if dist.is_initialized() and dist.group.WORLD is group:  # ours, and not already destroyed
            if ok:
                dist.barrier()  # no rank leaves while another still needs the group
            dist.destroy_process_group()
