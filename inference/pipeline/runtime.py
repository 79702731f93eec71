"""ONNX Runtime sessions: one per (process, model version, device, threads), cached.

Creating a session parses and optimises the graph (tens to hundreds of milliseconds, more on CUDA),
so a worker that segments many scans must pay it once, not per scan.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from inference.registry import ModelCard

DEVICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

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
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceError(
            "CUDA was requested but this ONNX Runtime has no CUDA provider "
            "(install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu)"
        )
    return [CPU]


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
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
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
