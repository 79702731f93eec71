"""A reference implementation of the AIMOS architecture, for timing only (random weights).

As published (Schoppe et al., Nat. Commun. 2020): the volume is normalised per volume (mean 0,
standard deviation 1), resampled to 240 um voxels and cut into coronal 2D slices; a 2D U-Net of 6
levels with 32 base channels doubling per level, each encoder level 2 x (3x3 conv, BN, ReLU) then
2x2 max-pooling, each decoder level bilinear upsampling, concatenation of the skip connection and
3 x (3x3 conv, BN, ReLU); a 1x1 convolution to one sigmoid map per organ; binarisation at 0.5 and 3D
reconstruction. PyTorch on the CPU with the requested number of threads. The timed run goes from
loading the NIfTI file to writing the label map, like ``bench/segment_speed.py`` times labseg.

    python bench/aimos_reference.py SCAN.nii.gz --out labels.nii.gz [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

#: AIMOS segments brain, heart, lungs, liver, kidneys, spleen, bladder, stomach, intestine, bones.
N_ORGANS = 10
SLICE_SPACING_MM = 0.24
LEVELS = 6
BASE_CHANNELS = 32


def _convs(c_in: int, c_out: int, count: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(count):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class AimosUNet(nn.Module):
    """Input ``[N, 1, H, W]`` (H, W multiples of 32); output sigmoid probabilities ``[N, C, H, W]``."""

    def __init__(self, n_classes: int = N_ORGANS, levels: int = LEVELS, base: int = BASE_CHANNELS) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(levels)]
        self.encoder = nn.ModuleList(
            _convs(1 if i == 0 else widths[i - 1], w, 2) for i, w in enumerate(widths)
        )
        self.decoder = nn.ModuleList(
            _convs(widths[i + 1] + widths[i], widths[i], 3) for i in reversed(range(levels - 1))
        )
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return torch.sigmoid(self.head(x))


def build_model(seed: int = 0) -> AimosUNet:
    torch.manual_seed(seed)
    return AimosUNet().eval()


def segment_reference(
    scan_path: Path, out_path: Path, *, model: AimosUNet, threads: int = 2, batch_size: int = 4
) -> dict[str, float]:
    """Run the reference on one file; returns seconds per stage and ``total``."""
    torch.set_num_threads(threads)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    image = nib.load(str(scan_path))
    canonical = nib.as_closest_canonical(image)
    volume = torch.from_numpy(np.asarray(canonical.dataobj, dtype=np.float32))
    spacing = canonical.header.get_zooms()[:3]
    seconds["load"] = time.perf_counter() - start

    mark = time.perf_counter()
    volume = (volume - volume.mean()) / volume.std().clamp_min(1e-6)
    size = [max(1, round(n * s / SLICE_SPACING_MM)) for n, s in zip(volume.shape, spacing, strict=True)]
    resampled = F.interpolate(volume[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]
    # Coronal slices: the x-z plane, one slice per y (anterior-posterior) position.
    slices = resampled.permute(1, 0, 2)
    pad_x, pad_z = (-slices.shape[1]) % 32, (-slices.shape[2]) % 32
    slices = F.pad(slices, (0, pad_z, 0, pad_x))
    seconds["preprocess"] = time.perf_counter() - mark

    mark = time.perf_counter()
    labels = torch.empty(slices.shape, dtype=torch.uint8)
    with torch.inference_mode():
        for first in range(0, slices.shape[0], batch_size):
            probabilities = model(slices[first : first + batch_size, None])
            best, index = probabilities.max(dim=1)
            labels[first : first + batch_size] = torch.where(best > 0.5, index + 1, 0).to(torch.uint8)
    seconds["inference"] = time.perf_counter() - mark

    mark = time.perf_counter()
    labels = labels[:, : resampled.shape[0], : resampled.shape[2]].permute(1, 0, 2)
    restored = F.interpolate(labels[None, None].float(), size=tuple(volume.shape), mode="nearest")[0, 0]
    out_image = nib.Nifti1Image(restored.to(torch.uint8).numpy(), canonical.affine)
    nib.save(out_image, str(out_path))
    seconds["restore_write"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scan", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    seconds = segment_reference(args.scan, args.out, model=build_model(), threads=args.threads)
    print(" ".join(f"{k}={v:.2f}s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
