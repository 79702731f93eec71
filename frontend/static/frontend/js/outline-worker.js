// Off the main thread: the band of each label map's structures within `width` voxels of their
// edge (a voxel whose box of radius `width` holds another value), for outlines.js.
function filter(values, dims, axis, width, pick) {
  const stride = axis === 0 ? 1 : axis === 1 ? dims[0] : dims[0] * dims[1];
  const size = dims[axis];
  const out = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const c = Math.floor(i / stride) % size;
    let best = values[i];
    const first = Math.max(0, c - width);
    const last = Math.min(size - 1, c + width);
    for (let k = first; k <= last; k++) best = pick(best, values[i + (k - c) * stride]);
    out[i] = best;
  }
  return out;
}

self.onmessage = (event) => {
  const { id, labels, dims, width } = event.data;
  let low = labels;
  let high = labels;
  for (let axis = 0; axis < 3; axis++) {
    if (dims[axis] < 2) continue;
    low = filter(low, dims, axis, width, Math.min);
    high = filter(high, dims, axis, width, Math.max);
  }
  const band = new Uint8Array(labels.length);
  for (let i = 0; i < labels.length; i++) if (labels[i] && low[i] !== high[i]) band[i] = labels[i];
  self.postMessage({ id, band }, [band.buffer]);
};
