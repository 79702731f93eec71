"""The annotators' outlines, computed in Chromium by ``outline-worker.js`` (the viewer's and the
review page's outlines), against the same band computed with SciPy: every labelled voxel whose box of
radius ``width`` (cut at the volume's edges) holds another value."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

pytestmark = [pytest.mark.browser]

RUN_WORKER = """async ([labels, dims, width]) => {
  const worker = new Worker("/static/frontend/js/outline-worker.js", { type: "module" });
  const band = await new Promise((resolve) => {
    worker.onmessage = (event) => resolve(event.data.band);
    worker.postMessage({ id: 0, labels: Uint8Array.from(labels), dims, width });
  });
  worker.terminate();
  return Array.from(band);
}"""


def _band(labels: np.ndarray, width: int) -> np.ndarray:
    size = 2 * width + 1
    low = ndimage.minimum_filter(labels, size=size, mode="nearest")
    high = ndimage.maximum_filter(labels, size=size, mode="nearest")
    return np.where((labels > 0) & (low != high), labels, 0).astype(np.uint8)


@pytest.mark.parametrize("shape", [(17, 11, 23), (9, 1, 14)])
def test_the_worker_draws_the_band_scipy_draws(
    browser: Any, live_server: Any, shape: tuple[int, int, int]
) -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros(shape, dtype=np.uint8)
    # Two touching boxes and scattered voxels: edges against air, against each other, at the border.
    labels[2:12, :, 3:15] = 4
    labels[8:16, :, 10:22] = 14
    labels[rng.random(shape) < 0.03] = 15
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{live_server.url}/login/")
        for width in (1, 2, 4):
            # NIfTI order: the first axis varies fastest, as NiiVue holds a volume's voxels.
            flat = labels.ravel(order="F").tolist()
            band = page.evaluate(RUN_WORKER, [flat, list(shape), width])
            drawn = np.asarray(band, dtype=np.uint8).reshape(shape, order="F")
            expected = _band(labels, width)
            assert expected.any() and np.array_equal(drawn, expected), f"width {width}"
    finally:
        context.close()
