"""Training batches made in worker processes, for a GPU (``TrainConfig.loader_workers``).

On the 2-core CPU the network step dominates, so ``train.py`` makes its crops in line. On a GPU
a step of this lean network takes milliseconds while a crop with its augmentation takes tens of
milliseconds of CPU and a synthetic volume a few tenths of a second: so ``loader_workers``
processes each keep their own synthetic pool (``SynthPool.for_worker``, seeds of their own) and
make whole batches with ``train.sample_batch``. torch's DataLoader hands the batches over in a
fixed worker order, so a run is repeatable for a given number of workers.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from inference.training.data import Case
from inference.training.synth_pool import SynthPool
from inference.training.tasks import TaskSpec

if TYPE_CHECKING:
    from inference.training.train import TrainConfig

#: One batch (image, fractions, labelled, weight, disagreement) and where it came from:
#: ``(worker, volumes that worker has drawn)``.
Batch = tuple[tuple[torch.Tensor, ...], tuple[int, int]]


class CropStream(IterableDataset[tuple[torch.Tensor, ...]]):
    """Endless batches for one worker; the pool refreshes at the in-line path's rate per crop."""

    def __init__(self, cases: list[Case], spec: TaskSpec, cfg: TrainConfig, synth: SynthPool | None) -> None:
        self.cases, self.spec, self.cfg, self.synth = cases, spec, cfg, synth

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        from inference.training.train import sample_batch  # train.py imports this module

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.cfg.seed, 41, worker])
        pool = self.synth.for_worker(worker, workers) if self.synth is not None else None
        # The in-line path steps the pool once per batch of 2 crops; keep that volumes-per-crop rate.
        pool_steps = max(self.cfg.batch // 2, 1)
        step = 0
        while True:
            if pool is not None:
                for _ in range(pool_steps):
                    pool.step(step)
                    step += 1
            batch = sample_batch(self.cases, self.spec, self.cfg, rng, pool.cases if pool else None)
            yield (*batch, torch.tensor([worker, pool.drawn if pool else 0]))


def crop_batches(
    cases: list[Case], spec: TaskSpec, cfg: TrainConfig, synth: SynthPool | None, *, pin: bool
) -> Generator[Batch, None, None]:
    """Batches from ``cfg.loader_workers`` processes, forever."""
    loader = DataLoader(
        CropStream(cases, spec, cfg, synth),
        batch_size=None,
        num_workers=cfg.loader_workers,
        pin_memory=pin,
        prefetch_factor=4,
        persistent_workers=True,
    )
    for *tensors, source in loader:
        yield tuple(tensors), (int(source[0]), int(source[1]))
