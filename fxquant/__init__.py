"""fxquant: mixed-precision post-training weight quantization as a torch.fx pass."""

from fxquant._version import __version__
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
]
