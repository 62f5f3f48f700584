"""Started by ``tests/test_torchrun.py`` under ``python -m torch.distributed.run``: a user script that
never calls ``init_process_group``. fxquant must start the group itself, give the single-process
result and leave no group behind; only rank 0 logs."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import fxquant  # noqa: E402
from fxquant.engine.distributed import is_main_process  # noqa: E402
from tests.test_torchrun import SCENARIO, calib, summary  # noqa: E402


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        if record.levelno >= logging.INFO:
            self.messages.append(record.getMessage())


def main(out: str) -> None:
    torch.set_num_threads(1)
    records = Records()
    logging.getLogger("fxquant").addHandler(records)
    logging.getLogger("fxquant").setLevel(logging.INFO)
    model, batches = calib()
    assert not dist.is_initialized()
    q = fxquant.compress(model, batches, verbose=True, **SCENARIO)
    result = {"summary": summary(q), "group_left": dist.is_initialized(), "main": is_main_process(),
              "logs": records.messages}
    torch.save(result, Path(out) / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
