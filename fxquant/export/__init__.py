"""Export of compressed models to runtime formats (ONNX with real low-bit weights)."""

from fxquant.export.onnx import ONNX_NATIVE_BITS, PACKINGS, ExportedLayer, ExportResult, export_onnx, required_opset
from fxquant.export.runtime import onnx_accuracy, onnx_predict, onnx_session

__all__ = ["ONNX_NATIVE_BITS", "PACKINGS", "ExportedLayer", "ExportResult", "export_onnx", "required_opset",
           "onnx_session", "onnx_predict", "onnx_accuracy"]
