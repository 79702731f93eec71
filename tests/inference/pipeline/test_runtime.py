"""ONNX Runtime sessions are cached per model and settings; sliding windows equal a whole pass."""

from __future__ import annotations

import itertools
import logging
import resource

import numpy as np
import onnxruntime as ort
import pytest

from inference.pipeline.infer import gaussian_weights, run_model, window_starts
from inference.pipeline.runtime import (
    DeviceError,
    cached_sessions,
    clear_sessions,
    get_session,
    keep_freed_memory,
    providers_for,
    session_provider,
)
from inference.registry import ModelCard


def test_one_session_per_model_and_thread_count(organ_model: ModelCard, tumor_model: ModelCard) -> None:
    clear_sessions()

    first = get_session(organ_model, device="cpu", threads=1)
    again = get_session(organ_model, device="cpu", threads=1)
    other_threads = get_session(organ_model, device="cpu", threads=2)
    other_model = get_session(tumor_model, device="cpu", threads=1)

    assert first is again
    assert other_threads is not first and other_model is not first
    assert cached_sessions() == 3


def test_cpu_is_always_available_and_auto_falls_back_to_it() -> None:
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("auto")[-1] == "CPUExecutionProvider"


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_cuda_without_a_cuda_provider_says_so() -> None:
    with pytest.raises(DeviceError, match="no CUDA provider"):
        providers_for("cuda")


def test_sliding_windows_give_the_whole_volume_result(organ_model: ModelCard) -> None:
    image = np.random.default_rng(5).random((45, 38, 70)).astype(np.float32)
    session = get_session(organ_model, device="cpu", threads=1)

    whole = run_model(session, organ_model, image)
    windows = run_model(session, organ_model, image, max_whole_voxels=1000, batch_size=3)

    assert whole.passes == 1 and windows.passes > 8
    assert windows.logits.shape == whole.logits.shape == (3, 45, 38, 70)
    assert np.allclose(windows.logits, whole.logits, atol=1e-4)
    assert windows.disagreement_logit is not None and whole.disagreement_logit is not None
    assert np.allclose(windows.disagreement_logit, whole.disagreement_logit, atol=1e-4)


def test_windows_cover_every_voxel_with_the_requested_overlap() -> None:
    starts = window_starts(100, 32, 0.25)

    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 24 for a, b in itertools.pairwise(starts))
    assert gaussian_weights((8, 8, 8)).min() > 0


def test_auto_on_a_machine_without_cuda_runs_on_the_cpu_and_says_so(
    organ_model: ModelCard, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: auto takes it")
    clear_sessions()

    with caplog.at_level(logging.INFO, logger="inference.pipeline.runtime"):
        session = get_session(organ_model, device="auto", threads=1)

    assert session_provider(session) == "CPUExecutionProvider"
    assert "no CUDA provider in this ONNX Runtime" in caplog.text and "runs on the CPU" in caplog.text


def test_a_cuda_provider_that_cannot_load_falls_back_to_the_cpu_with_a_warning(
    organ_model: ModelCard, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime-gpu lists CUDA even where no driver or CUDA library loads; ONNX Runtime then runs
    the graph on the CPU. Here the CPU-only build is made to list CUDA, so the real session meets a
    CUDA provider it cannot load, as such a machine would."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime loads CUDA for real")
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    clear_sessions()

    with caplog.at_level(logging.INFO, logger="inference.pipeline.runtime"):
        session = get_session(organ_model, device="auto", threads=1)

    assert providers_for("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_provider(session) == "CPUExecutionProvider"
    assert "could not be loaded" in caplog.text and "runs on the CPU" in caplog.text
    clear_sessions()


def test_a_scan_sized_buffer_freed_is_reused_without_faulting_its_pages_in_again() -> None:
    assert keep_freed_memory()  # glibc, as on every machine labseg runs on
    size = 96 << 20  # a 192 x 192 x 520 scan as float32 is 77 MB

    def faults_to_fill() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = np.ones(size, dtype=np.uint8)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del buffer
        return faults

    faults_to_fill()
    # Without the heap kept, every fill faults its pages in again: 560 faults here (numpy asks
    # for 2 MB pages), 24,576 where the kernel gives 4 kB pages only.
    assert faults_to_fill() < 50
