"""Running an exported file in onnxruntime with exact results.

onnxruntime's graph optimizer may fuse ``DequantizeLinear -> MatMul`` into its
``MatMulNBits`` kernel, whose default ``accuracy_level=4`` quantizes the
*activations* to int8 as well (~0.2-0.9% output error). The session option
``session.qdq_matmulnbits_accuracy_level = "1"`` keeps float activations, so the
file computes what the compressed PyTorch model computes. :func:`onnx_session`
sets it; Conv and Gemm weights are not fused and stay exact either way.

onnxruntime 1.32's QDQ optimizer mishandles 2-bit (uint2) codes: sessions fail to
start ("Element type mismatch" in constant folding) or the fused ``MatMulNBits``
computes wrong outputs. For files holding uint2 codes :func:`onnx_session`
therefore sets ``session.disable_quant_qdq = "1"``: onnxruntime then folds every
``DequantizeLinear`` into a float constant when the session starts (exact,
small on disk, float memory at run time, like the bit-stream packing).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

__all__ = ["onnx_session", "onnx_predict", "onnx_accuracy", "EXACT_SESSION_CONFIG", "FOLD_WEIGHTS_CONFIG"]

EXACT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "1"}
FOLD_WEIGHTS_CONFIG = {"session.disable_quant_qdq": "1"}


def _has_uint2(path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return any(init.data_type == onnx.TensorProto.UINT2 for init in model.graph.initializer)


def onnx_session(path, *, threads: int | None = None, fold_weights: bool | None = None) -> ort.InferenceSession:
    """A CPU ``onnxruntime.InferenceSession`` for ``path`` configured for exact weight-only results.

    Args:
        threads: onnxruntime's intra-op threads (default: onnxruntime's own choice).
        fold_weights: fold every ``DequantizeLinear`` to float when the session
            starts (``session.disable_quant_qdq``). Default: only for files with
            2-bit codes, which onnxruntime 1.32's QDQ fusions get wrong.
    """
    options = ort.SessionOptions()
    config = dict(EXACT_SESSION_CONFIG)
    if fold_weights if fold_weights is not None else _has_uint2(path):
        config.update(FOLD_WEIGHTS_CONFIG)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_predict(session: ort.InferenceSession, inputs: torch.Tensor) -> torch.Tensor:
    """The session's first output for one float32 input batch, as a tensor."""
    name = session.get_inputs()[0].name
    array = np.ascontiguousarray(inputs.detach().to(torch.float32).cpu().numpy())
    return torch.from_numpy(session.run(None, {name: array})[0])


def onnx_accuracy(path_or_session, loader) -> tuple[float, int]:
    """Top-1 accuracy (percent) and image count of an ONNX classifier over ``(inputs, targets)`` batches."""
    session = path_or_session if isinstance(path_or_session, ort.InferenceSession) else onnx_session(path_or_session)
    correct = total = 0
    for inputs, targets in loader:
        logits = onnx_predict(session, inputs)
        correct += int((logits.argmax(dim=1) == targets).sum())
        total += int(targets.numel())
    if total == 0:
        raise ValueError("onnx_accuracy: the loader yielded no images")
    return 100.0 * correct / total, total
