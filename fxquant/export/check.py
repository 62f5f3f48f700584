"""Check an exported ONNX file against the compressed PyTorch model on real batches.

:func:`compare_onnx` runs both on the same ``(inputs, targets)`` batches and
reports onnxruntime's top-1 accuracy, how many predictions agree with PyTorch's
and the largest output difference; :func:`onnx_demo_step` is the export step of
``fxquant demo`` (export, check, and the lines the demo prints).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fxquant.export.onnx import export_onnx
from fxquant.export.runtime import onnx_predict, onnx_session

__all__ = ["OnnxCheck", "compare_onnx", "onnx_demo_step"]


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on the same images."""

    images: int
    onnx_accuracy: float  # top-1, percent
    torch_accuracy: float  # top-1 of the PyTorch model, percent
    agreeing: int  # images whose onnxruntime prediction equals PyTorch's
    max_rel_diff: float  # max |onnx - torch| / max |torch| over each batch's logits

    def to_dict(self) -> dict:
        return asdict(self)


def compare_onnx(qmodel: nn.Module, path_or_session, loader) -> OnnxCheck:
    """Run ``qmodel`` (PyTorch, eval mode, no gradients) and the ONNX file over ``loader``; ``qmodel`` is not edited."""
    session = onnx_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    was_training = qmodel.training
    qmodel.eval()
    images = onnx_correct = torch_correct = agreeing = 0
    worst = 0.0
    try:
        with torch.no_grad():
            for inputs, targets in loader:
                expected = qmodel(inputs)
                got = onnx_predict(session, inputs)
                if got.shape != expected.shape:
                    raise ValueError(f"the ONNX output has shape {tuple(got.shape)}, PyTorch's "
                                     f"{tuple(expected.shape)}")
                worst = max(worst, float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)))
                onnx_pred, torch_pred = got.argmax(dim=1), expected.argmax(dim=1)
                onnx_correct += int((onnx_pred == targets).sum())
                torch_correct += int((torch_pred == targets).sum())
                agreeing += int((onnx_pred == torch_pred).sum())
                images += int(targets.numel())
    finally:
        qmodel.train(was_training)
    if images == 0:
        raise ValueError("compare_onnx: the loader yielded no images")
    return OnnxCheck(images, 100.0 * onnx_correct / images, 100.0 * torch_correct / images, agreeing, worst)


def onnx_demo_step(qmodel: nn.Module, path, loader, fxq_bytes: int) -> tuple[dict, list[str]]:
    """Export ``qmodel`` to ``path`` (shape from the first batch), check it on ``loader``.

    The demo's search uses all widths 1..8, so the file is written with
    ``packing="bitstream"`` (exact size at every width). Returns a JSON-ready
    summary and the lines the demo prints.
    """
    first = next(iter(loader))[0][:1]
    result = export_onnx(qmodel, path, example_input=first, packing="bitstream")
    check = compare_onnx(qmodel, result.path, loader)
    summary = {"onnx_file_bytes": result.file_bytes, "onnx_opset": result.opset,
               "onnx_test_accuracy": check.onnx_accuracy, "onnx_agreeing_predictions": check.agreeing,
               "onnx_max_rel_diff": check.max_rel_diff}
    same = "the same as PyTorch's" if check.agreeing == check.images else \
        f"{check.images - check.agreeing} prediction(s) differ from PyTorch's"
    lines = [f"onnxruntime ({Path(result.path).name}, opset {result.opset}, bit-stream weights): held-out top-1 "
             f"{check.onnx_accuracy:.2f}% on {check.images:,} images, {same} (max relative logit difference "
             f"{check.max_rel_diff:.1e})",
             f"files: model.fxq {fxq_bytes / 1024:.1f} KiB, {Path(result.path).name} "
             f"{result.file_bytes / 1024:.1f} KiB "
             f"(codes {result.weight_bytes / 1024:.1f} KiB for {result.ideal_bytes / 1024:.1f} KiB of packed bits)"]
    return summary, lines
