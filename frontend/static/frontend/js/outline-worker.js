// Off the main thread: the band of each label map's structures within `width` voxels of their
// edge (a voxel whose box of radius `width` holds another value), for outlines.js. The box's
// minimum and maximum are separable: one pass per axis, both in the same pass, line by line (a
// review page outlines three annotators before its first frame, so this is on its critical path).
function filterAxis(low, high, dims, axis, width) {
  const strides = [1, dims[0], dims[0] * dims[1]];
  const stride = strides[axis];
  const size = dims[axis];
  const [a, b] = [0, 1, 2].filter((other) => other !== axis);
  const outLow = new Uint8Array(low.length);
  const outHigh = new Uint8Array(high.length);
  for (let j = 0; j < dims[b]; j++) {
    for (let i = 0; i < dims[a]; i++) {
      const start = i * strides[a] + j * strides[b];
      for (let c = 0; c < size; c++) {
        const first = c > width ? c - width : 0;
        const last = c + width < size ? c + width : size - 1;
        let at = start + first * stride;
        let min = low[at];
        let max = high[at];
        for (let k = first + 1; k <= last; k++) {
          at += stride;
          if (low[at] < min) min = low[at];
          if (high[at] > max) max = high[at];
        }
        outLow[start + c * stride] = min;
        outHigh[start + c * stride] = max;
      }
    }
  }
  return [outLow, outHigh];
}

self.onmessage = (event) => {
  const { id, labels, dims, width } = event.data;
  let low = labels;
  let high = labels;
  for (let axis = 0; axis < 3; axis++) {
    if (dims[axis] < 2) continue;
    [low, high] = filterAxis(low, high, dims, axis, width);
  }
  const band = new Uint8Array(labels.length);
  for (let i = 0; i < labels.length; i++) if (labels[i] && low[i] !== high[i]) band[i] = labels[i];
  self.postMessage({ id, band }, [band.buffer]);
};
