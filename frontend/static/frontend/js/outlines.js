// Outlines a researcher can see: a label map drawn as the band of each structure within `width`
// voxels of its edge (NiiVue's own atlas outline is one voxel of the volume's grid: 1 px on a wide
// canvas). The band is computed in a worker (outline-worker.js), so the page keeps answering input;
// the viewer and the review page share this module and its width control.
const worker = new Worker(new URL("./outline-worker.js", import.meta.url), { type: "module" });
const pending = new Map();
let nextId = 0;
worker.onmessage = (event) => {
  pending.get(event.data.id)(event.data.band);
  pending.delete(event.data.id);
};

export const DEFAULT_WIDTH = 2;

/** Replace the volume's voxels by the band of its labels (kept in volume.labelsAsLoaded). */
export async function outline(volume, width) {
  if (!volume.labelsAsLoaded) volume.labelsAsLoaded = Uint8Array.from(volume.img);
  const labels = volume.labelsAsLoaded.slice();
  const dims = [volume.hdr.dims[1], volume.hdr.dims[2], volume.hdr.dims[3]];
  const id = nextId++;
  const band = await new Promise((resolve) => {
    pending.set(id, resolve);
    worker.postMessage({ id, labels, dims, width }, [labels.buffer]);
  });
  volume.img.set(band);
  volume.hdr.intent_code = 0; // drawn filled: the band is the outline
  return volume;
}
