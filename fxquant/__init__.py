"""fxquant: mixed-precision post-training weight quantization as a torch.fx pass."""

from fxquant._version import __version__
from fxquant.nn.attention import QuantMultiheadAttention
from fxquant.core.config import QuantConfig
from fxquant.nn.modules import (
    DEFAULT_QUANT_MODULE_MAPPING,
    PackedWeight,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantLinear,
    set_weight_cache,
)
from fxquant.core.packing import pack, packed_nbytes, unpack
from fxquant.engine.oracle import AccuracyOracle
from fxquant.nn.storage import WeightStorage, state_dict_bytes, weight_storage
from fxquant.core.quantizer import QuantizedWeight, dequantize, fake_quantize, quantize_weight
from fxquant.api import compress, quantizable_layers, quantize
from fxquant.exploration import Exploration, explore
from fxquant.fileformat.saveload import FxqFormatError, load, save
from fxquant.export.onnx import export_onnx
from fxquant.reporting.draw import draw
from fxquant.reporting.plot import plot
from fxquant.reporting.report import CompressionReport, report
from fxquant.schema import SearchConfig

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
    "explore",
    "Exploration",
    "report",
    "CompressionReport",
    "AccuracyOracle",
    "SearchConfig",
    "save",
    "load",
    "FxqFormatError",
    "export_onnx",
    "plot",
    "draw",
]
