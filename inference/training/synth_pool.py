"""A pool of domain-randomised training cases, refreshed while training runs.

``inference.phantom.synth.synth_sample`` costs a few tenths of a second per volume on the shared
CPU, more than a training step's crops are worth alone; so the trainer keeps ``size`` synthetic
volumes and replaces one every ``refresh_every`` steps, round robin, each drawn from a source
picked by weight with the next seed. Every pool case is a ``Case`` like a phantom's, so the
trainer's crops, augmentation and partial-label loss apply unchanged. Where crops are made in
worker processes (``crop_stream.py``) each worker keeps its own pool (``for_worker``), drawing
every ``stride``-th seed from ``offset`` so that no two workers draw the same volume.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from inference.phantom.synth import Source, synth_sample
from inference.training.data import Case, case_from_arrays
from inference.training.tasks import TaskSpec

log = logging.getLogger(__name__)


def volume_seed(seed: int, k: int, worker: int = 0, workers: int = 1) -> int:
    """The generator seed of the ``k``-th volume that worker ``worker`` of ``workers`` draws."""
    return seed * 1_000_000 + worker + k * workers


@dataclass
class SynthPool:
    """``sources`` with relative ``weights`` (default equal); ``focus_ids``: canonical ids the
    volume's box is centred on half the time (the tumor model's lesions), when a source holds them."""

    sources: Sequence[Source]
    spec: TaskSpec
    seed: int = 0
    size: int = 48
    shape: tuple[int, int, int] = (56, 56, 84)
    refresh_every: int = 4
    weights: Sequence[float] | None = None
    focus_ids: tuple[int, ...] = ()
    variety: float = 1.0
    plain_body: float = 0.0
    clipped: float = 0.0
    rolled: float = 0.0
    sizes: tuple[float, float] = (0.85, 1.15)
    contrast: float = 0.0
    offset: int = 0
    stride: int = 1
    cases: list[Case] = field(default_factory=list)
    drawn: int = 0

    def __post_init__(self) -> None:
        w = np.ones(len(self.sources)) if self.weights is None else np.asarray(self.weights, float)
        self._p = w / w.sum()
        # One pool keeps the stream that runs before workers existed; each worker has its own.
        key = [self.seed, 23] if self.stride == 1 else [self.seed, 23, self.offset, self.stride]
        self._rng = np.random.default_rng(key)
        self._next = 0

    def for_worker(self, worker: int, workers: int) -> SynthPool:
        """An empty pool like this one for worker ``worker`` of ``workers`` (its own seeds)."""
        return replace(self, offset=worker, stride=workers, cases=[], drawn=0)

    def seed_of(self, k: int) -> int:
        """The generator seed of this pool's ``k``-th volume."""
        return volume_seed(self.seed, k, self.offset, self.stride)

    def draw(self) -> Case:
        """One new case (the next seed)."""
        i = int(self._rng.choice(len(self.sources), p=self._p))
        source = self.sources[i]
        centre: tuple[int, int, int] | None = None
        if self.focus_ids and self._rng.random() < 0.5:
            hits = np.argwhere((source.fractions[list(self.focus_ids)] > 127).any(axis=0))
            if len(hits):
                x, y, z = (int(v) for v in hits[int(self._rng.integers(len(hits)))])
                centre = (x, y, z)
        seed = self.seed_of(self.drawn)
        self.drawn += 1
        sample = synth_sample(
            source,
            seed,
            shape=self.shape,
            centre=centre,
            variety=self.variety,
            plain_body=self.plain_body,
            clipped=self.clipped,
            rolled=self.rolled,
            sizes=self.sizes,
            contrast=self.contrast,
        )
        return case_from_arrays(
            f"synth-{source.name}-{seed}",
            self.spec,
            sample.ct,
            sample.fractions,
            sample.labelled,
            ignore=sample.ignore,
            disagreement=sample.disagreement,
            spacing_mm=source.spacing_mm,
        )

    def fill(self) -> list[Case]:
        while len(self.cases) < self.size:
            self.cases.append(self.draw())
        return self.cases

    def step(self, step: int) -> None:
        """Called once per training step: replaces one volume every ``refresh_every`` steps."""
        if not self.cases:
            self.fill()
        elif step % self.refresh_every == 0:
            self.cases[self._next] = self.draw()
            self._next = (self._next + 1) % len(self.cases)
