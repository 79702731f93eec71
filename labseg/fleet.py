"""What the fleet of workers is, seen from any web process: the workers that answer, the queues they
consume, and the messages waiting in the broker.

Workers are found with Celery's remote control (``inspect().active_queues()``: a broadcast through
the broker that every live worker answers within ``timeout_s``). Routing asks "is any worker
consuming ``gpu``?" on every segmentation request, so that answer is cached for
``LABSEG_GPU_WORKERS_CACHE_S`` seconds per process. A broker that cannot broadcast (the embedded
``filesystem://`` broker of ``make run``, eager mode) or is down counts as "no workers seen".
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings

logger = logging.getLogger(__name__)

GPU_QUEUE, CPU_QUEUE = "gpu", "cpu"
QUEUES = (CPU_QUEUE, GPU_QUEUE)


@dataclass(frozen=True)
class WorkerSeen:
    name: str
    queues: tuple[str, ...]
    active: int | None = None  # tasks running now, when asked


def _can_broadcast() -> bool:
    url = str(settings.CELERY_BROKER_URL)
    return not settings.CELERY_TASK_ALWAYS_EAGER and not url.startswith(("filesystem://", "memory://"))


def workers_seen(*, timeout_s: float = 1.0, with_active: bool = False) -> list[WorkerSeen]:
    """The workers that answered a broadcast within ``timeout_s``, with the queues they consume."""
    if not _can_broadcast():
        return []
    from .celery import app

    try:
        inspect = app.control.inspect(timeout=timeout_s)
        queues = inspect.active_queues() or {}
        active = (inspect.active() or {}) if with_active and queues else {}
    except Exception as exc:  # a broker that is down or refuses the broadcast: no workers seen
        logger.warning("could not ask the workers which queues they consume: %s", exc)
        return []
    return [
        WorkerSeen(
            name=name,
            queues=tuple(sorted(str(q.get("name", "")) for q in consumed or [])),
            active=len(active.get(name) or []) if with_active else None,
        )
        for name, consumed in sorted(queues.items())
    ]


#: Broker URI -> (is a gpu worker up, when the answer expires): an answer about one broker never
#: stands for another (a process whose Celery app is pointed elsewhere asks again).
_gpu_cache: dict[str, tuple[bool, float]] = {}
_gpu_lock = threading.Lock()


def gpu_workers_up() -> bool:
    """Whether a live worker consumes the ``gpu`` queue (cached ``LABSEG_GPU_WORKERS_CACHE_S``)."""
    if not _can_broadcast():
        return False
    from .celery import app

    ttl = float(settings.LABSEG_GPU_WORKERS_CACHE_S)
    broker = str(app.connection_for_read().as_uri())
    with _gpu_lock:
        up, expires = _gpu_cache.get(broker, (False, 0.0))
        if time.monotonic() < expires:
            return up
    up = any(GPU_QUEUE in worker.queues for worker in workers_seen(timeout_s=0.5))
    with _gpu_lock:
        _gpu_cache[broker] = (up, time.monotonic() + ttl)
    return up


def forget_gpu_workers() -> None:
    """Drop the cached answer (tests; the next request asks the workers again)."""
    with _gpu_lock:
        _gpu_cache.clear()


def queue_depths(queues: tuple[str, ...] = QUEUES) -> dict[str, int | None]:
    """Messages waiting in the broker per queue (Redis ``LLEN``); None where it cannot be read."""
    url = str(settings.CELERY_BROKER_URL)
    if not url.startswith(("redis://", "rediss://")):
        return dict.fromkeys(queues)
    from .celery import app

    try:
        with app.connection_for_read() as connection:
            client = connection.default_channel.client
            return {queue: int(client.llen(queue)) for queue in queues}
    except Exception as exc:
        logger.warning("could not read the queue depths from the broker: %s", exc)
        return dict.fromkeys(queues)
