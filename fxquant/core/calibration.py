"""Calibration statistics of a conv/linear layer's input: what data-aware quantization needs.

A layer computes ``y = W x`` column by column: for ``nn.Linear`` a column is one
input vector, for a convolution it is one receptive field (im2col), flattened in
the order of the weight's ``[C_in/groups, *kernel]`` dimensions and split by
group. :class:`InputStats` accumulates, per group ``g``:

* ``H[g] = sum x x^T`` over all columns (the input second moments that GPTQ's
  error compensation is weighted by; ``||(W - Q) X||^2 = tr((W-Q) H (W-Q)^T)``),
* ``sum x`` (the mean input column, which gives the output-mean shift a weight
  error causes: ``E[(W - Q) x] = (W - Q) E[x]``),

from any number of input batches. Knows nothing of FX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InputStats", "input_columns", "supports_input_stats", "calibration_inputs", "check_inputs"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def supports_input_stats(module: nn.Module) -> bool:
    """True for the layers whose input columns :func:`input_columns` can form."""
    return isinstance(module, (nn.Linear, *_CONVS))


def _padded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` padded exactly as the convolution pads it (any padding mode, ``"same"`` included)."""
    pads = getattr(module, "_reversed_padding_repeated_twice", None)
    if pads is None or not any(pads):
        return x
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, list(pads), mode=mode)


def _patches(x: torch.Tensor, kernel, stride, dilation) -> torch.Tensor:
    """``[B, C, *out, *kernel]`` sliding windows of an already padded ``[B, C, *spatial]`` input."""
    for i, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
        # A dilated window is a contiguous window of span (k-1)*d+1, sampled every d.
        x = x.unfold(2 + i, (k - 1) * d + 1, s)
        if d > 1:
            x = x[..., ::d]
    return x  # unfold appends the window dims in order: [B, C, *out, *kernel]


def input_columns(module: nn.Module, x: torch.Tensor, max_positions: int | None = None,
                  offset: int = 0) -> torch.Tensor:
    """The layer's input columns, ``[groups, K, N]`` float32 (``K`` = weight row length / group).

    ``max_positions`` keeps at most that many output positions of a convolution
    per sample (evenly strided, starting at ``offset``): neighbouring receptive
    fields are highly redundant, and the statistics of early layers would
    otherwise cost more than the rest of the model. Raises ValueError for a
    module that is not a Linear or Conv1d/2d/3d.
    """
    x = x.detach().to(torch.float32)
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    if not isinstance(module, _CONVS):
        raise ValueError(f"input statistics need a Linear or Conv1d/2d/3d, got {type(module).__name__}")
    dims = len(module.kernel_size)
    if x.dim() == dims + 1:  # an unbatched input
        x = x.unsqueeze(0)
    x = _padded(module, x)
    b = x.shape[0]
    if dims == 2:
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
    else:
        p = _patches(x, module.kernel_size, module.stride, module.dilation)  # [B, C, *out, *kernel]
        out_dims = list(range(2, 2 + dims))
        kern_dims = list(range(2 + dims, 2 + 2 * dims))
        p = p.permute(0, 1, *kern_dims, *out_dims)  # [B, C, *kernel, *out]
        cols = p.reshape(b, -1, math.prod(p.shape[2 + dims:]))
    if max_positions is not None and cols.shape[2] > max_positions:
        length = cols.shape[2]
        step = length / max_positions
        pick = ((torch.arange(max_positions) * step).long() + offset) % length
        cols = cols[:, :, pick]
    g = module.groups
    k = cols.shape[1] // g
    # [B, C*kk, L] -> [g, K, B*L]; channels are contiguous per group, kernel positions inside.
    return cols.reshape(b, g, k, -1).permute(1, 2, 0, 3).reshape(g, k, -1)


class InputStats:
    """Running input second moments and means of one layer (see the module docstring)."""

    def __init__(self, module: nn.Module, max_positions: int | None = 64) -> None:
        if not supports_input_stats(module):
            raise ValueError(f"input statistics need a Linear or Conv1d/2d/3d, got {type(module).__name__}")
        self.module = module
        self.max_positions = max_positions
        self._batches = 0
        self.hessian: torch.Tensor | None = None  # [g, K, K], sum of x x^T
        self.sum: torch.Tensor | None = None  # [g, K]
        self.count = 0  # columns seen

    def add(self, x: torch.Tensor) -> None:
        """Accumulate one input batch of the layer."""
        # A different offset per batch: over many batches every position gets sampled.
        cols = input_columns(self.module, x, self.max_positions, offset=self._batches)
        self._batches += 1
        if self.hessian is None:
            g, k, _ = cols.shape
            self.hessian = torch.zeros(g, k, k, device=cols.device)
            self.sum = torch.zeros(g, k, device=cols.device)
        self.hessian.baddbmm_(cols, cols.transpose(1, 2))
        self.sum += cols.sum(dim=2)
        self.count += cols.shape[2]

    @property
    def mean(self) -> torch.Tensor:
        """Mean input column ``[g, K]``."""
        self._check()
        return self.sum / self.count

    def _check(self) -> None:
        if self.count == 0:
            raise ValueError(f"no input seen for this {type(self.module).__name__}: the calibration data "
                             "never reached it")


def calibration_inputs(batches, max_samples: int, name: str = "calib_loader") -> list[torch.Tensor]:
    """The model inputs of ``batches`` (``(inputs, targets)`` pairs or bare tensors), at most
    ``max_samples`` samples (the last batch is cut). Raises ValueError when there are none."""
    if isinstance(batches, torch.Tensor):
        raise TypeError(f"{name} is a single tensor; pass an iterable of batches, e.g. [inputs] or a DataLoader "
                        "(iterating a tensor would give one sample at a time)")
    out, seen = [], 0
    try:
        for i, batch in enumerate(batches):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{name}: batch {i} holds a {type(x).__name__}, expected a tensor "
                                 "(or an (inputs, targets) pair)")
            x = x if x.dim() > 0 else x.unsqueeze(0)
            take = min(x.shape[0], max_samples - seen)
            out.append(x[:take])
            seen += take
            if seen >= max_samples:
                break
    except TypeError as e:
        raise ValueError(f"{name} must be an iterable of batches, got {type(batches).__name__}") from e
    if not out:
        raise ValueError(f"{name} yielded no batches")
    return out


def _shape(x: torch.Tensor) -> str:
    dims = list(x.shape)
    return str(tuple(dims)) if len(dims) <= 8 else f"({', '.join(map(str, dims[:8]))}, ...) ({len(dims)} dims)"


def check_inputs(inputs: list[torch.Tensor], name: str = "calib_loader", dtype: torch.dtype | None = None) -> None:
    """Refuse input batches the model cannot run, naming ``name`` and the batch index.

    Inputs must be floating point (of ``dtype``, the model's, when given) and
    every batch must have batch 0's number of dimensions and channels (dim 1);
    other sizes may vary.
    """
    first = inputs[0]
    for i, x in enumerate(inputs):
        if not x.is_floating_point():
            raise TypeError(f"{name} batch {i}: inputs are {x.dtype}; the model needs float inputs (e.g. "
                            "images.float() / 255, then normalised as in training)")
        if dtype is not None and x.dtype != dtype:
            raise TypeError(f"{name} batch {i}: inputs are {x.dtype} but the model's weights are {dtype}; "
                            f"convert them with .to({dtype})")
        if x.device.type == "meta":
            raise ValueError(f"{name} batch {i}: inputs are on the meta device (they hold no values)")
        if x.dim() != first.dim() or (x.dim() > 1 and x.shape[1] != first.shape[1]):
            raise ValueError(f"{name} batch {i}: inputs of shape {_shape(x)}, but batch 0 has {_shape(first)}: "
                             "every batch needs the same number of dimensions and channels")
