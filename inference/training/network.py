"""A lean 3D U-Net for whole-body mouse CT at coarse spacing.

Input ``[N, 1, X, Y, Z]`` (normalised intensity, RAS axis order), every spatial size a multiple of
``2 ** (levels - 1)``. Outputs ``logits [N, K, X, Y, Z]`` and ``disagreement [N, 1, X, Y, Z]`` (a
logit; sigmoid = probability that annotators disagree at the voxel, trained as in AIMOS).
BatchNorm folds into the convolutions on export, so ONNX Runtime sees conv + ReLU only.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet3D(nn.Module):
    """``levels`` resolutions with ``base * 2**i`` channels; transposed-conv upsampling."""

    def __init__(self, n_classes: int, *, base: int = 12, levels: int = 4) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(levels)]
        self.levels = levels
        self.down = nn.ModuleList()
        c_in = 1
        for w in widths:
            self.down.append(_block(c_in, w))
            c_in = w
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_low, w in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose3d(w_low, w, 2, stride=2))
            self.dec.append(_block(2 * w, w))
        self.logits = nn.Conv3d(widths[0], n_classes, 1)
        self.disagreement = nn.Conv3d(widths[0], 1, 1)

    @property
    def divisible_by(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.logits(x), self.disagreement(x)
