// Review page: every annotator's label map over the CT, side by side (filled) and overlaid
// (outlines), the disagreement map on demand, and approve / reject with a note.
// NiiVue is served by the frontend app as an ES module under /static/vendor/niivue/.
import { Niivue } from "../vendor/niivue/niivue.js";

const config = JSON.parse(document.getElementById("review-config").textContent);
const csrfToken = document.querySelector("input[name=csrfmiddlewaretoken]").value;
const message = document.getElementById("review-message");
const NIFTI_INTENT_LABEL = 1002;

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// A label lookup table that paints every label value of this annotator in one colour, so the
// outline colour says who drew it; ``alpha`` is the fill (0 = outline only).
function annotatorLut(annotation, alpha) {
  const [r, g, b] = rgb(annotation.colour);
  const values = [...new Set(Object.values(annotation.values))].sort((x, y) => x - y);
  return {
    R: [0, ...values.map(() => r)],
    G: [0, ...values.map(() => g)],
    B: [0, ...values.map(() => b)],
    A: [0, ...values.map(() => alpha)],
    I: [0, ...values],
  };
}

function asLabelMap(volume, annotation, alpha) {
  volume.hdr.intent_code = NIFTI_INTENT_LABEL;
  volume.setColormapLabel(annotatorLut(annotation, alpha));
}

async function viewer(canvas, sliceType) {
  const nv = new Niivue({
    backColor: [0, 0, 0, 1],
    crosshairWidth: 0,
    show3Dcrosshair: false,
    isColorbar: false,
    loadingText: "loading…",
  });
  await nv.attachToCanvas(canvas);
  nv.setSliceType(sliceType);
  return nv;
}

function ctVolume() {
  return { url: config.scan_url, name: `scan${config.scan}.nii.gz`, colormap: "gray" };
}

function annotationVolume(a) {
  return { url: a.url, name: `annotation${a.id}.nii.gz`, colormap: "gray", opacity: 1 };
}

function say(text, kind = "info") {
  message.textContent = text;
  message.className = `message ${kind}`;
  message.hidden = false;
}

let overlay = null;
let disagreementVolume = null;

async function showSideBySide() {
  for (const a of config.annotations) {
    const canvas = document.getElementById(`viewer-${a.id}`);
    const nv = await viewer(canvas, 1);
    await nv.loadVolumes([ctVolume(), annotationVolume(a)]);
    asLabelMap(nv.volumes[1], a, 255);
    nv.setOpacity(1, 0.5); // the CT stays readable under the fill
    nv.updateGLVolume();
    canvas.dataset.loaded = "true";
  }
}

async function showOverlay() {
  const canvas = document.getElementById("overlay");
  overlay = await viewer(canvas, 1);
  await overlay.loadVolumes([ctVolume(), ...config.annotations.map(annotationVolume)]);
  config.annotations.forEach((a, i) => asLabelMap(overlay.volumes[i + 1], a, 0));
  overlay.setAtlasOutline(1);
  overlay.updateGLVolume();
  canvas.dataset.loaded = "true";
}

function structure() {
  const element = document.getElementById("structure");
  return element ? element.value : null;
}

async function setDisagreement(on) {
  const toggle = document.getElementById("disagreement-toggle");
  const canvas = document.getElementById("overlay");
  if (disagreementVolume) {
    overlay.removeVolume(disagreementVolume);
    disagreementVolume = null;
  }
  if (on && structure()) {
    const url = config.disagreement_url.replace("__structure__", structure());
    try {
      const volume = await overlay.addVolumeFromUrl({ url, name: `disagreement_${structure()}.nii.gz`, colormap: "warm", opacity: 0.8, cal_min: 0.01, cal_max: 0.5 });
      disagreementVolume = volume ?? overlay.volumes[overlay.volumes.length - 1];
    } catch (error) {
      toggle.checked = false;
      say(`The disagreement map could not be loaded: ${error}`, "error");
    }
  }
  document.getElementById("disagreement-legend").hidden = !disagreementVolume;
  canvas.dataset.disagreement = disagreementVolume ? "on" : "off";
  overlay.updateGLVolume();
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
  await showOverlay();
  await showSideBySide();
  document.getElementById("disagreement-toggle").addEventListener("change", (e) => setDisagreement(e.target.checked));
  document.getElementById("structure")?.addEventListener("change", () => {
    const toggle = document.getElementById("disagreement-toggle");
    if (toggle.checked) setDisagreement(true);
  });
  document.getElementById("slice-type").addEventListener("change", (e) => overlay.setSliceType(Number(e.target.value)));
  document.body.dataset.reviewReady = "true";
}

main().catch((error) => say(`The viewer could not start: ${error}`, "error"));
