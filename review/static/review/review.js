// Review page: one NiiVue viewer, one CT: every annotator's label map outlined in their colour over
// the scan, each switchable from its card, the outline width adjustable, the disagreement map on
// demand, and approve / reject / undo with a note. The CT and the annotations come from the viewer's
// previews (the same grid, made when they were stored), the coarsest level first for the first
// frame, then the finer level once the page is idle; a full-resolution CT per annotator is never
// loaded. NiiVue is served by the frontend app as an ES module under /static/vendor/niivue/.
// window.labsegReview: firstFrameMs, level, settled (tests and bench/viewer.py read them).
import { Niivue, NVImage } from "../vendor/niivue/niivue.js";
import { keepThroughContextLoss, quietScene } from "../frontend/js/gpu.js";
import { DEFAULT_WIDTH, outline } from "../frontend/js/outlines.js";

const config = JSON.parse(document.getElementById("review-config").textContent);
const csrfToken = document.querySelector("input[name=csrfmiddlewaretoken]").value;
const message = document.getElementById("review-message");
// marks: when each step of the first frame ended (ms since navigation), for bench/viewer.py.
const hook = (window.labsegReview = { firstFrameMs: null, level: null, settled: false, errors: [], marks: { moduleMs: performance.now() } });
const state = { level: "first", width: DEFAULT_WIDTH, hidden: new Set() };

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// A label lookup table that paints every structure of this annotator in one colour, so the
// outline's colour says who drew it (the layer holds canonical structure ids).
function annotatorLut(annotation) {
  const [r, g, b] = rgb(annotation.colour);
  const ids = annotation.ids;
  return { R: [0, ...ids.map(() => r)], G: [0, ...ids.map(() => g)], B: [0, ...ids.map(() => b)], A: [0, ...ids.map(() => 255)], I: [0, ...ids] };
}

function say(text, kind = "info") {
  message.textContent = text;
  message.className = `message ${kind}`;
  message.hidden = false;
}

let overlay = null;
let update = null; // every texture rebuild, built while the page keeps answering (gpu.js)
let disagreementVolume = null;
const annotationVolumes = new Map(); // annotation id -> its volume at the level shown

async function readAnnotation(a, level) {
  const volume = await NVImage.loadFromUrl({ url: `${a.url}?level=${level}`, name: `ann-${a.id}.nii.gz`, opacity: state.hidden.has(a.id) ? 0 : 1 });
  volume.setColormapLabel(annotatorLut(a));
  return outline(volume, state.width);
}

// The CT and every annotator at ``level``, read apart from the scene.
function readLevel(level) {
  const ct = NVImage.loadFromUrl({ url: `${config.ct_url}?level=${level}`, name: "ct.nii.gz", colormap: "gray" });
  return Promise.all([ct, ...config.annotations.map((a) => readAnnotation(a, level))]);
}

// Swap the volumes of ``level`` in at once (read now, unless ``reading`` already).
async function showLevel(level, reading = null) {
  const volumes = await (reading ?? readLevel(level));
  if (volumes[0].global_min <= -500) Object.assign(volumes[0], { cal_min: -160, cal_max: 240 }); // soft tissue, in HU
  await new Promise((resolve) => setTimeout(resolve, 0)); // reading and building: two tasks
  if (!hook.firstFrameMs) hook.marks.readMs = performance.now();
  config.annotations.forEach((a, i) => annotationVolumes.set(a.id, volumes[i + 1]));
  if (disagreementVolume) volumes.push(disagreementVolume);
  await update(() => {
    overlay.volumes = volumes;
    overlay.back = volumes[0];
    overlay.overlays = volumes.slice(1);
    overlay.updateGLVolume();
  });
  state.level = hook.level = level;
  document.getElementById("overlay").dataset.level = level;
}

async function startViewer() {
  const canvas = document.getElementById("overlay");
  overlay = new Niivue({ backColor: [0, 0, 0, 1], crosshairWidth: 0, show3Dcrosshair: false, isColorbar: false, loadingText: "", multiplanarShowRender: 0 });
  // The first level is read while NiiVue sets up WebGL (its shaders), not after.
  const reading = readLevel("first");
  reading.catch(() => {}); // reported by showLevel
  await overlay.attachToCanvas(canvas);
  hook.marks.canvasMs = performance.now();
  update = quietScene(overlay);
  keepThroughContextLoss(overlay, hook);
  overlay.setSliceType(1);
  await showLevel("first", reading);
  hook.firstFrameMs = hook.marks.drawnMs = performance.now();
  canvas.dataset.loaded = "true";
}

// After the first frame, once idle: the finer preview level, where it is finer.
async function refine() {
  const levels = config.levels;
  const finer = levels.slice(1).filter((l, i) => l.factor < levels[i].factor);
  for (const l of finer) {
    await new Promise((resolve) => (window.requestIdleCallback ?? setTimeout)(resolve, { timeout: 1000 }));
    await showLevel(l.level);
  }
  hook.settled = true;
  document.body.dataset.reviewSettled = "true";
}

function showAnnotator(id, shown) {
  if (shown) state.hidden.delete(id);
  else state.hidden.add(id);
  const volume = annotationVolumes.get(id);
  if (volume) volume.opacity = shown ? 1 : 0;
  const canvas = document.getElementById("overlay");
  return (volume ? update() : Promise.resolve()).then(() => (canvas.dataset.hidden = [...state.hidden].join(",")));
}

async function setOutlineWidth(width) {
  state.width = width;
  await Promise.all([...annotationVolumes.values()].map((v) => outline(v, width)));
  await update();
  document.getElementById("overlay").dataset.outlineWidth = String(width);
}

function structure() {
  const element = document.getElementById("structure");
  return element ? element.value : null;
}

async function setDisagreement(on) {
  const toggle = document.getElementById("disagreement-toggle");
  const canvas = document.getElementById("overlay");
  if (disagreementVolume) {
    const old = disagreementVolume;
    disagreementVolume = null;
    await update(() => overlay.removeVolume(old));
  }
  if (on && structure()) {
    const url = config.disagreement_url.replace("__structure__", structure());
    try {
      const volume = await NVImage.loadFromUrl({ url, name: `disagreement_${structure()}.nii.gz`, colormap: "warm", opacity: 0.8, cal_min: 0.01, cal_max: 0.5 });
      disagreementVolume = volume;
      await update(() => overlay.addVolume(volume));
    } catch (error) {
      toggle.checked = false;
      say(`The disagreement map could not be loaded: ${error}`, "error");
    }
  }
  document.getElementById("disagreement-legend").hidden = !disagreementVolume;
  canvas.dataset.disagreement = disagreementVolume ? "on" : "off";
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken, Accept: "application/json" },
    body: JSON.stringify(body ?? {}),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `the server answered ${response.status}`);
  return data;
}

function showStatus(card, annotation) {
  const status = card.querySelector("[data-role=status]");
  status.textContent = annotation.status[0].toUpperCase() + annotation.status.slice(1);
  status.className = `badge status-${annotation.status}`;
  const shown = card.querySelector("[data-role=note]");
  shown.textContent = annotation.review_note ? `${annotation.reviewer}: ${annotation.review_note}` : "";
  shown.hidden = !annotation.review_note;
}

function wireReviewForms() {
  for (const form of document.querySelectorAll(".review-form")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const action = event.submitter.value;
      const id = form.dataset.annotation;
      const note = form.querySelector("textarea").value;
      const card = form.closest(".annotator");
      const problem = form.querySelector(".form-error");
      problem.textContent = "";
      try {
        const annotation = await post(`/api/annotations/${id}/${action}`, { note });
        showStatus(card, annotation);
        // The decision can be undone from the same place, until a newer version replaces it.
        form.querySelector("textarea").value = "";
        form.dataset.decided = annotation.status === "submitted" ? "" : annotation.status;
        say(`${card.querySelector("h3").textContent.trim()}: ${annotation.status}.`, "success");
      } catch (error) {
        problem.textContent = error.message; // beside the buttons, where the reviewer is looking
      }
    });
  }
  const compute = document.getElementById("compute-consensus");
  compute?.addEventListener("click", async () => {
    compute.disabled = true;
    try {
      const result = await post(`/api/scans/${config.scan}/consensus`);
      if (result.analysis && ["queued", "running"].includes(result.analysis.state)) {
        say("This scan is large: a worker is computing the consensus. Reload the page in a few minutes.", "info");
        return;
      }
      say(`Consensus computed for ${result.consensus.map((c) => c.structure).join(", ")}; reloading…`, "success");
      window.location.reload();
    } catch (error) {
      say(error.message, "error");
      compute.disabled = false;
    }
  });
}

async function main() {
  wireReviewForms();
  if (!config.annotations.length) return;
  await startViewer();
  document.getElementById("disagreement-toggle").addEventListener("change", (e) => setDisagreement(e.target.checked));
  document.getElementById("structure")?.addEventListener("change", () => {
    const toggle = document.getElementById("disagreement-toggle");
    if (toggle.checked) setDisagreement(true);
  });
  document.getElementById("slice-type").addEventListener("change", (e) => overlay.setSliceType(Number(e.target.value)));
  const width = document.getElementById("outline-width");
  width.value = String(state.width);
  width.addEventListener("change", () => setOutlineWidth(Number(width.value)));
  for (const box of document.querySelectorAll("[data-show-annotation]")) {
    box.addEventListener("change", () => showAnnotator(Number(box.dataset.showAnnotation), box.checked));
  }
  document.body.dataset.reviewReady = "true";
  await refine();
}

main().catch((error) => {
  hook.errors.push(String(error));
  say(`The viewer could not start: ${error}`, "error");
});
