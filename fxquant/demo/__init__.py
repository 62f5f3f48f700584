"""``fxquant demo``: the end-to-end example (synthetic or real data, training, search, report).

``fxquant.demo:DemoCNN`` is recorded as the architecture spec in the files the demo
writes, so it stays importable from here.
"""

from fxquant.data.synthetic import BANDS, SYNTHETIC_CLASSES, SYNTHETIC_VERSION, synthetic_dataset
from fxquant.demo.model import DemoCNN
from fxquant.demo.run import DEFAULT_SIZES, MODEL_SPEC, QUICK_SIZES, DemoSizes, run_demo

__all__ = ["BANDS", "SYNTHETIC_CLASSES", "SYNTHETIC_VERSION", "DemoCNN", "DemoSizes", "DEFAULT_SIZES",
           "QUICK_SIZES", "MODEL_SPEC", "synthetic_dataset", "run_demo"]
