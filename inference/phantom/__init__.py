"""Procedural mouse micro-CT phantoms with ground truth and simulated annotators (numpy/scipy only)."""

from inference.phantom.generator import Phantom, generate_phantom

__all__ = ["Phantom", "generate_phantom"]
