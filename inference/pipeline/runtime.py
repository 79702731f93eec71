"""ONNX Runtime sessions: one per (process, model version, device, threads), cached.

Creating a session parses and optimises the graph (tens to hundreds of milliseconds, more on CUDA),
so a worker that segments many scans must pay it once, not per scan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from inference.registry import ModelCard

DEVICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

logger = logging.getLogger(__name__)

_sessions: dict[tuple[str, str, tuple[str, ...], int], ort.InferenceSession] = {}
_lock = threading.Lock()


class DeviceError(RuntimeError):
    """The requested device cannot run here (e.g. ``cuda`` on a machine without a CUDA provider)."""


def providers_for(device: str) -> list[str]:
    """Execution providers for ``device``: ``auto`` takes CUDA when this ONNX Runtime has it."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        _preload_cuda_libraries()
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceError(
            "CUDA was requested but this ONNX Runtime has no CUDA provider "
            "(install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu)"
        )
    return [CPU]


_preloaded: list[bool] = []

#: glibc ``mallopt`` parameters (malloc.h) and the largest buffer served from the heap.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_BUFFER_MAX = 256 << 20
_heap_kept: list[bool] = []


def keep_freed_memory() -> bool:
    """Let this process reuse the memory of one scan's arrays for the next (glibc only, once).

    glibc gives every buffer over 32 MB (a scan's float32 copies: 40-80 MB) straight back to the
    kernel when it is freed, so each scan faults all of them in again, zero-filled: 0.2-0.8 s of
    kernel time a scan, on top of 3 s of work (``bench/segment_speed.py``, 192 x 192 x 520).
    Buffers up to ``HEAP_BUFFER_MAX`` now come from the heap and stay there: a worker keeps its
    peak memory (1.0-1.15 GB for such a scan) between jobs instead of paying for it again.
    Called when the first session is made, so only processes that segment do it. Returns whether
    the allocator took the settings."""
    if _heap_kept:
        return _heap_kept[0]
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    kept = bool(
        libc is not None
        and hasattr(libc, "mallopt")
        and libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BUFFER_MAX)
        and libc.mallopt(_M_TRIM_THRESHOLD, 2 * HEAP_BUFFER_MAX)
    )
    _heap_kept.append(kept)
    return kept


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu from requirements-gpu.txt brings CUDA and cuDNN as pip packages (its
    ``cuda``/``cudnn`` extras); ``preload_dlls`` loads them from there once per process, so the image
    needs no CUDA toolkit. A failure is only logged: the session then falls back to the CPU and
    ``_log_fallback`` says so."""
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return
    _preloaded.append(True)
    try:
        ort.preload_dlls()
    except Exception as exc:  # missing libraries: the provider will fail to load and say why
        logger.warning("could not preload the CUDA and cuDNN libraries: %s", exc)


def _log_fallback(device: str, providers: list[str], session: ort.InferenceSession, path: Path) -> None:
    """Say which device runs the model when it is not the one the settings hoped for: ``auto`` on a
    machine without a CUDA provider, or CUDA listed but not loaded (ONNX Runtime then falls back to
    the CPU on its own, e.g. onnxruntime-gpu without a driver or CUDA libraries)."""
    running = session_provider(session)
    if device == "auto" and providers == [CPU]:
        logger.info("no CUDA provider in this ONNX Runtime (%s); %s runs on the CPU", ort.__version__, path)
    elif providers[0] == CUDA and running != CUDA:
        logger.warning(
            "CUDA was available but could not be loaded for %s (see ONNX Runtime's messages above: "
            "driver or CUDA libraries); it runs on the CPU (%s)",
            path,
            running,
        )


def get_session(card: ModelCard, *, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """The cached session for ``card``; ``threads`` = intra-op threads (0 = ONNX Runtime's choice)."""
    return get_file_session(
        card.onnx_path, card.sha256, device=device, threads=threads, check=lambda s: _check_io(card, s)
    )


def get_file_session(
    path: Path,
    sha256: str,
    *,
    device: str = "auto",
    threads: int = 0,
    check: Callable[[ort.InferenceSession], None] | None = None,
) -> ort.InferenceSession:
    """The cached session for the ONNX file at ``path`` (a model's weights or one of its refiners);
    ``check`` runs once, on the new session, before it is cached."""
    if threads < 0:
        raise ValueError("threads must be 0 (automatic) or a positive number")
    providers = providers_for(device)
    key = (str(path), sha256, tuple(providers), threads)
    with _lock:
        session = _sessions.get(key)
        if session is None:
            keep_freed_memory()
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # predict_volume runs the organ and tumor tasks side by side: threads spinning while
            # they wait for work would take the core the other task's numpy work needs
            # (bench/segment_speed.py, 192 x 192 x 520: 2.65-2.7 s warm without, 2.75-2.9 s with).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            _log_fallback(device, providers, session, path)
            if check is not None:
                check(session)
            _sessions[key] = session
        return session


def _check_io(card: ModelCard, session: ort.InferenceSession) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name for o in session.get_outputs()}
    if card.input_name not in inputs:
        raise ValueError(f"model {card.key} has no input {card.input_name!r} (it has {inputs})")
    wanted = [card.logits_name] + ([card.disagreement_name] if card.disagreement_name else [])
    missing = [name for name in wanted if name not in outputs]
    if missing:
        raise ValueError(f"model {card.key} lacks the outputs {missing} named in model.json")


def session_provider(session: ort.InferenceSession) -> str:
    """The provider that runs the graph (the first one the session accepted)."""
    return str(session.get_providers()[0])


def cached_sessions() -> int:
    return len(_sessions)


def clear_sessions() -> None:
    """Drop every cached session (tests; a worker reloading its models)."""
    with _lock:
        _sessions.clear()
