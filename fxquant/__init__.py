"""fxquant: mixed-precision post-training weight quantization as a torch.fx pass."""

from fxquant._version import __version__
from fxquant.attention import QuantMultiheadAttention
from fxquant.config import QuantConfig
from fxquant.modules import (
    DEFAULT_QUANT_MODULE_MAPPING,
    PackedWeight,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantLinear,
    set_weight_cache,
)
from fxquant.packing import pack, packed_nbytes, unpack
from fxquant.oracle import AccuracyOracle
from fxquant.storage import WeightStorage, state_dict_bytes, weight_storage
from fxquant.quantizer import QuantizedWeight, dequantize, fake_quantize, quantize_weight

__all__ = [
    "__version__",
    "QuantConfig",
    "QuantizedWeight",
    "quantize_weight",
    "fake_quantize",
    "dequantize",
    "pack",
    "unpack",
    "packed_nbytes",
    "QuantLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "PackedWeight",
    "DEFAULT_QUANT_MODULE_MAPPING",
    "set_weight_cache",
    "QuantMultiheadAttention",
    "WeightStorage",
    "weight_storage",
    "state_dict_bytes",
    "quantize",
    "quantizable_layers",
    "compress",
    "report",
    "CompressionReport",
    "AccuracyOracle",
    "SearchConfig",
    "save",
    "load",
    "FxqFormatError",
    "plot",
    "draw",
]

# The API layer imports the FX passes, which import this package's numeric core;
# loading it lazily (PEP 562) keeps `import passes` free of an import cycle.
_LAZY = {
    "quantize": "fxquant.api",
    "quantizable_layers": "fxquant.api",
    "compress": "fxquant.api",
    "report": "fxquant.reporting",
    "CompressionReport": "fxquant.reporting",
    "SearchConfig": "passes.search",
    "save": "fxquant.saveload",
    "load": "fxquant.saveload",
    "FxqFormatError": "fxquant.saveload",
    "plot": "fxquant.plotting",
    "draw": "passes.visualize",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fxquant' has no attribute {name!r}")
