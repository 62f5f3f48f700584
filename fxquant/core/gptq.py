"""GPTQ / OBQ error-compensating rounding onto fxquant's grid (Frantar et al., 2022).

Nearest rounding minimises each weight's own error. What matters is the layer's
output error ``||(W - Q) X||^2 = sum_rows (w - q) H (w - q)^T`` with
``H = X X^T`` over the calibration inputs (:mod:`fxquant.core.calibration`). GPTQ
rounds one input column at a time and spreads that column's rounding error over
the columns not yet rounded, optimally for ``H`` (the Optimal Brain Surgeon
update, with the inverse Hessian's Cholesky factor so no inverse is updated).

Here the grid (scale and zero point per output channel or per tensor) is fixed
first from the float weight exactly as nearest rounding would choose it
(:func:`fxquant.core.quantizer.compute_qparams`), so the codes, grid and packed format
are those of any other fxquant layer; only which level each weight takes changes.
Columns are visited in descending ``diag(H)`` ("act-order"), which the static
grid allows at no cost. Grouped and depthwise convolutions are handled as a
batch of independent problems, one per group.

Pure tensor code; knows nothing of FX.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from fxquant.core.config import QuantConfig
from fxquant.core.quantizer import QuantizedWeight, compute_qparams, quantize_weight

__all__ = ["gptq_quantize", "gptq_factor", "GPTQFactor"]

log = logging.getLogger("fxquant.gptq")

_BLOCK = 128  # columns updated lazily as one block: the block's error hits the rest in one matmul


def _inverse_cholesky(h: torch.Tensor, damp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp*mean(diag) I)^-1`` per group, damping more if needed."""
    diag_mean = h.diagonal(dim1=1, dim2=2).mean(dim=1)
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    for attempt in range(6):
        lam = damp * (10 ** attempt) * diag_mean.clamp(min=1e-12)
        try:
            low = torch.linalg.cholesky(h + lam.view(-1, 1, 1) * eye)
            return torch.linalg.cholesky(torch.cholesky_inverse(low), upper=True)
        except torch.linalg.LinAlgError:  # the inverse can lose definiteness in float32 too
            log.debug("%s: input Hessian not positive definite at damp %.3g; damping more",
                      name, damp * 10 ** attempt)
    raise ValueError(f"{name}: the input second-moment matrix stays singular even with heavy damping")


@dataclass(frozen=True)
class GPTQFactor:
    """What GPTQ needs of a layer's input statistics, independent of the bit-width.

    Computing it (two Cholesky factorisations) dominates GPTQ's cost; a search
    trying several widths of one layer computes it once (:func:`gptq_factor`).
    """

    perm: torch.Tensor  # [g, K] column visiting order (descending diag(H))
    inv_chol: torch.Tensor  # [g, K, K] upper Cholesky factor of the damped, permuted H^-1
    dead: torch.Tensor  # [g, K] bool: columns no input ever excites

    @property
    def groups(self) -> int:
        return self.perm.shape[0]


def gptq_factor(hessian: torch.Tensor, damp: float = 0.01, name: str = "weight") -> GPTQFactor:
    """Factor the input second moments ``hessian`` (``[g, K, K]`` or ``[K, K]``) for :func:`gptq_quantize`."""
    h = hessian.detach().to(torch.float32, copy=True)
    if h.dim() == 2:
        h = h.unsqueeze(0)
    if h.dim() != 3 or h.shape[1] != h.shape[2]:
        raise ValueError(f"{name}: expected a [groups, K, K] Hessian, got shape {tuple(hessian.shape)}")
    g, k, _ = h.shape
    diag = h.diagonal(dim1=1, dim2=2)
    dead = diag == 0
    diag.masked_fill_(dead, 1.0)  # H[dead, dead] = 1 keeps H invertible; those weights are zeroed anyway
    perm = torch.argsort(diag, dim=1, descending=True, stable=True)
    h = h.gather(1, perm.unsqueeze(2).expand(g, k, k)).gather(2, perm.unsqueeze(1).expand(g, k, k))
    return GPTQFactor(perm=perm, inv_chol=_inverse_cholesky(h, damp, name), dead=dead)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor | GPTQFactor, config: QuantConfig,
                  name: str = "weight", *, groups: int = 1) -> QuantizedWeight:
    """Quantize ``weight`` with GPTQ against the input second moments ``hessian``.

    Args:
        weight: ``[C_out, ...]`` float weight; row ``c`` flattened is one output channel.
        hessian: ``[groups, K, K]`` (or ``[K, K]`` when ``groups == 1``) sum or mean of
            ``x x^T`` over the layer's input columns, ``K = weight[0].numel()``; or its
            :func:`gptq_factor` (reused across bit-widths).
        config: grid settings (bits, granularity, scheme, clipping) and ``damp``.
        name: the layer, named in errors.
        groups: the convolution's groups; output channels ``g*C_out/groups ...`` read group ``g``.

    Returns the same :class:`~fxquant.core.quantizer.QuantizedWeight` layout as
    :func:`~fxquant.core.quantizer.quantize_weight` (same grid); a layer whose
    statistics are empty or not finite falls back to nearest rounding.
    """
    scale, zero_point = compute_qparams(weight, config, name)  # validates the weight
    w = weight.detach().to(torch.float32)
    cout = w.shape[0]
    if not isinstance(groups, int) or groups < 1 or cout % groups:
        raise ValueError(f"{name}: groups={groups!r} does not divide {cout} output channels")
    k = w[0].numel() if cout else 0
    if isinstance(hessian, torch.Tensor):
        shape = tuple(hessian.shape) if hessian.dim() == 3 else (1, *hessian.shape)
        if shape != (groups, k, k):
            raise ValueError(f"{name}: Hessian of shape {tuple(hessian.shape)} does not fit a weight of shape "
                             f"{tuple(w.shape)} with groups={groups} (expected {(groups, k, k)})")
        if cout == 0 or k == 0 or not torch.isfinite(hessian).all() \
                or not hessian.diagonal(dim1=-2, dim2=-1).any():
            return quantize_weight(weight, config, name)
        factor = gptq_factor(hessian, config.damp, name)
    else:
        factor = hessian
        if tuple(factor.inv_chol.shape) != (groups, k, k):
            raise ValueError(f"{name}: GPTQ factor of shape {tuple(factor.inv_chol.shape)} does not fit a "
                             f"weight of shape {tuple(w.shape)} with groups={groups}")
    rows = cout // groups
    levels = (1 << config.bits) - 1
    cols = w.reshape(groups, rows, k).clone()
    s = scale.expand(cout).reshape(groups, rows) if scale.numel() == 1 else scale.reshape(groups, rows)
    z = zero_point.expand(cout).reshape(groups, rows) if zero_point.numel() == 1 \
        else zero_point.reshape(groups, rows)
    # A column no input ever excites carries no information: its weights get the level nearest 0.
    cols.masked_fill_(factor.dead.unsqueeze(1), 0.0)
    perm = factor.perm
    cols = cols.gather(2, perm.unsqueeze(1).expand(groups, rows, k))
    u = factor.inv_chol

    codes = torch.empty(groups, rows, k)
    for i1 in range(0, k, _BLOCK):
        i2 = min(i1 + _BLOCK, k)
        block = cols[:, :, i1:i2].clone()
        errors = torch.empty_like(block)
        u_block = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = block[:, :, i]
            q = torch.round(col / s + z).clamp_(0, levels)
            codes[:, :, i1 + i] = q
            err = (col - s * (q - z)) / u_block[:, i, i].unsqueeze(1)
            block[:, :, i:] -= err.unsqueeze(2) * u_block[:, i, i:].unsqueeze(1)
            errors[:, :, i] = err
        cols[:, :, i2:] -= torch.bmm(errors, u[:, i1:i2, i2:])

    codes = codes.gather(2, torch.argsort(perm, dim=1).unsqueeze(1).expand(groups, rows, k))
    return QuantizedWeight(codes=codes.reshape(w.shape).to(torch.uint8), scale=scale,
                           zero_point=zero_point, bits=config.bits)
