// Scan viewer (NiiVue): the CT with window presets, multiplanar and 3D views, prediction labels in
// the canonical colours with per-structure toggles and opacity, annotations as outlines, consensus,
// uncertainty heatmap, a crosshair readout, lesion markers and the side panel's charts.
//
// It opens progressively: the 2D planes first on the server's smallest preview (config.levels[0],
// a few hundred thousand voxels that software WebGL draws at once), then each finer level replaces
// the last once the page is idle, up to full resolution when config.autoFull (else full resolution
// of the whole scan or of a region on request). The 3D render is drawn only on request (the 3D view,
// or the "3D tile" button): without a GPU it blocks the page for seconds.
// window.labsegViewer: firstFrameMs (performance.now() when the code first drew the scan with its
// overlay), level (the level shown), settled (the progressive load ended); tests and
// bench/viewer.py read them (the bench also times the frame as the screen shows it).
import { Niivue, NVImage, NVImageFromUrlOptions, SLICE_TYPE, cmapper } from "../../vendor/niivue/niivue.js";
import { barChart } from "./charts.js";
import { keepThroughContextLoss, quietScene } from "./gpu.js";
import { DEFAULT_WIDTH, outline } from "./outlines.js";

const config = JSON.parse(document.getElementById("viewer-config").textContent);
const structures = config.structures;
const byId = new Map(structures.map((s) => [s.id, s]));
const byName = new Map(structures.map((s) => [s.name, s]));
const hidden = new Set(); // structure ids switched off
const state = { level: config.levels[0].level, region: null, window: config.defaultWindow, outlineWidth: DEFAULT_WIDTH };
const status = document.getElementById("viewer-status");
const hook = (window.labsegViewer = { firstFrameMs: null, errors: [], level: null, levels: [], loads: [], settled: false, renderShown: false, config, marks: { moduleMs: performance.now() } });

const LABEL_KINDS = new Set(["labels", "annotation", "consensus"]);
const DEFAULT_ON = new Set(["ct", "labels"]);
const DEFAULT_OPACITY = { labels: 0.55, uncertainty: 0.6, annotation: 1, consensus: 0.5 };

const nv = new Niivue({
  backColor: [0.06, 0.07, 0.09, 1],
  crosshairColor: [0.2, 0.8, 1, 0.9],
  crosshairWidth: 0.5,
  crosshairWidthUnit: "percent",
  isResizeCanvas: true,
  dragAndDropEnabled: false,
  loadingText: "",
  logLevel: "error",
  multiplanarShowRender: 0,
  atlasOutline: 1,
});
hook.nv = nv;
// Every texture rebuild goes through update(): built while the page keeps answering (gpu.js).
const update = quietScene(nv);

function setStatus(text) {
  status.textContent = text;
  status.hidden = !text;
}

// The label lookup table: canonical colours, alpha 0 for background and for hidden structures.
function labelLut(alpha = 255) {
  const ids = structures.map((s) => s.id);
  return cmapper.makeLabelLut({
    R: structures.map((s) => s.rgb[0]),
    G: structures.map((s) => s.rgb[1]),
    B: structures.map((s) => s.rgb[2]),
    A: structures.map((s) => (s.id === 0 || hidden.has(s.id) ? 0 : alpha)),
    I: ids,
    labels: structures.map((s) => s.display_name),
  });
}

function layerUrl(layer) {
  if (state.region) return `${layer.url}?region=${state.region.map((v) => v.toFixed(2)).join(",")}`;
  return `${layer.url}?level=${state.level}`;
}

function volumeOptions(layer, visible) {
  const opacity = visible ? (layer.kind === "ct" ? 1 : (layer.opacity ?? DEFAULT_OPACITY[layer.kind])) : 0;
  const options = { url: layerUrl(layer), name: `${layer.key}.nii.gz`, opacity };
  if (layer.kind === "ct") {
    const w = config.windows[state.window];
    options.colormap = "gray";
    if (w.low !== null) Object.assign(options, { cal_min: w.low, cal_max: w.high });
  } else if (LABEL_KINDS.has(layer.kind)) {
    options.colormapLabel = labelLut();
  } else if (layer.kind === "uncertainty") {
    Object.assign(options, { colormap: "warm", cal_min: 25, cal_max: 255 });
  }
  return options;
}

// Each volume is read apart from the scene (NVImage.loadFromUrl ignores a colormapLabel option),
// given its lookup table, and joins the scene only when every volume of its level is ready, so a
// finer level replaces the coarser one without a blank frame. Predictions and the consensus are
// filled; each annotator is drawn as a band of DEFAULT_WIDTH voxels (outlines.js, width control).
async function readVolume(layer, visible) {
  const volume = await NVImage.loadFromUrl(volumeOptions(layer, visible));
  if (LABEL_KINDS.has(layer.kind)) volume.colormapLabel = labelLut();
  if (layer.kind === "annotation") await outline(volume, state.outlineWidth);
  else if (volume.hdr.intent_code === 1002) volume.hdr.intent_code = 0;
  return volume;
}

async function setOutlineWidth(width) {
  state.outlineWidth = width;
  const annotations = config.layers.filter((l) => l.kind === "annotation" && l.volume);
  await Promise.all(annotations.map((l) => outline(l.volume, width)));
  await redraw();
  document.body.dataset.outlineWidth = String(width);
}

function layerOf(key) {
  return config.layers.find((l) => l.key === key);
}

function visibleLayers() {
  return config.layers.filter((l) => l.visible);
}

// The CT and every visible overlay of the current level, fetched and read in parallel.
function readLevel() {
  const wanted = visibleLayers();
  return { wanted, t0: performance.now(), reading: Promise.all(wanted.map((layer) => readVolume(layer, true))) };
}

async function loadAll({ quiet = false, level = null } = {}) {
  // Swapped in at once, so a finer level replaces the coarser one without a blank frame.
  if (!quiet) setStatus(state.region ? "Loading full resolution of the region…" : state.level === "full" ? "Loading full resolution…" : "Loading…");
  const { wanted, t0, reading } = level ?? readLevel();
  const volumes = await reading;
  await nextTask(); // the last volume's reading and the rebuild are two tasks, not one long one
  mark("read");
  const t1 = performance.now();
  // One rebuild with the window already on the CT (a second one doubled the GPU's work).
  await redraw(() => {
    for (const layer of config.layers) layer.volume = null;
    wanted.forEach((layer, i) => (layer.volume = volumes[i]));
    nv.volumes = volumes;
    nv.back = volumes[0];
    nv.overlays = volumes.slice(1);
    applyWindow();
    nv.updateGLVolume();
  });
  mark("drawn");
  hook.level = state.region ? "region" : state.level;
  hook.levels.push(hook.level);
  // Per level: ms to read its volumes, and then to build their textures and draw them.
  hook.loads.push({ level: hook.level, readMs: Math.round(t1 - t0), builtMs: Math.round(performance.now() - t1) });
  describeResolution();
  if (!quiet) setStatus("");
  document.body.dataset.level = hook.level;
}

// A change to the volumes (or just a frame, with ``change`` null for a rebuild), drawn once the GPU
// has built it; the readout then follows layers and levels.
async function redraw(change = null) {
  await update(change);
  if (hook.firstFrameMs) nv.createOnLocationChange();
}

function report(error) {
  hook.errors.push(String(error));
}

// A frame without rebuilding textures (the view, the 3D tile): NiiVue draws it at once.
function frameDrawn() {
  nv.drawScene();
  return new Promise((resolve) => requestAnimationFrame(() => resolve(performance.now())));
}

function nextTask() {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

// When each step of the first level ended (ms since navigation), for bench/viewer.py.
function mark(step) {
  if (!hook.firstFrameMs) hook.marks[`${step}Ms`] = performance.now();
}

function idle() {
  return new Promise((resolve) => (window.requestIdleCallback ?? setTimeout)(() => resolve(), { timeout: 1000 }));
}

// After the first frame: each finer preview level, then full resolution when config.autoFull, each
// once the page is idle; a level the researcher chose meanwhile (region, whole scan) stops it.
async function refine() {
  const steps = config.levels.slice(1).filter((l, i) => l.factor < config.levels[i].factor).map((l) => l.level);
  if (config.autoFull && config.factor > 1) steps.push("full");
  for (const level of steps) {
    await idle();
    if (state.manual) break;
    state.level = level;
    await loadAll({ quiet: true });
  }
  hook.settled = true;
  document.body.dataset.settled = "1";
}

async function showLayer(layer, visible) {
  layer.visible = visible;
  if (layer.volume) {
    layer.volume.opacity = visible ? (layer.opacity ?? DEFAULT_OPACITY[layer.kind]) : 0;
    await redraw();
  } else if (visible) {
    setStatus(`Loading ${layer.title}…`);
    const volume = await readVolume(layer, true);
    layer.volume = volume;
    await redraw(() => nv.addVolume(volume));
    setStatus("");
  } else {
    await frameDrawn();
  }
  document.body.dataset.layersChanged = String(Date.now());
}

function setLayerOpacity(layer, opacity) {
  layer.opacity = opacity;
  if (layer.volume && layer.visible) {
    layer.volume.opacity = opacity;
    redraw().catch(report); // a slider's steps during one rebuild make one more rebuild, not one each
  }
}

function refreshLabels() {
  for (const layer of config.layers) {
    if (layer.volume && LABEL_KINDS.has(layer.kind)) layer.volume.colormapLabel = labelLut();
  }
  return redraw();
}

// The chosen window on the CT volume (NiiVue applies it when it builds the CT's texture).
function applyWindow() {
  const ct = layerOf("ct").volume;
  if (!ct || !state.window) return;
  const w = config.windows[state.window];
  ct.cal_min = w.low ?? ct.robust_min; // auto: the percentile range NiiVue computed on load
  ct.cal_max = w.high ?? ct.robust_max;
}

function setWindow(key) {
  state.window = key;
  for (const button of document.querySelectorAll("[data-window]")) button.setAttribute("aria-pressed", String(button.dataset.window === key));
  if (!layerOf("ct").volume) return Promise.resolve();
  applyWindow();
  return redraw().catch(report);
}

const VIEWS = { multiplanar: SLICE_TYPE.MULTIPLANAR, axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL, render: SLICE_TYPE.RENDER };

function setView(key) {
  if (key === "render") hook.renderShown = true; // the 3D render, on request only
  nv.setSliceType(VIEWS[key]);
  for (const button of document.querySelectorAll("[data-view]")) button.setAttribute("aria-pressed", String(button.dataset.view === key));
}

// Keys, as a desktop viewer has them (listed in the help panel, scan.html #keys-help).
const SLICE_AXIS = { axial: [0, 0, 1], coronal: [0, 1, 0], sagittal: [1, 0, 0], multiplanar: [0, 0, 1], render: [0, 0, 1] };
const VIEW_KEYS = { a: "axial", c: "coronal", s: "sagittal", m: "multiplanar", r: "render" };
const LAYER_KEYS = { o: "labels", u: "uncertainty", n: "annotation" };
const OUTLINE_WIDTHS = [1, 2, 3, 4];

function currentView() {
  return document.querySelector("[data-view][aria-pressed=true]")?.dataset.view ?? "multiplanar";
}

function stepSlice(steps) {
  const [x, y, z] = SLICE_AXIS[currentView()];
  nv.moveCrosshairInVox(x * steps, y * steps, z * steps);
  document.body.dataset.sliceMoved = String(Date.now());
}

async function toggleKind(kind) {
  const layers = config.layers.filter((l) => l.kind === kind);
  if (!layers.length) return;
  const visible = !layers.some((l) => l.visible);
  for (const layer of layers) {
    const box = document.getElementById(`layer-${layer.key}`);
    if (box) box.checked = visible;
    await showLayer(layer, visible);
  }
}

function onKey(event) {
  // Typing or a slider keeps its keys; a ticked checkbox does not (a layer toggled, then a key).
  if (event.target.closest("input:not([type=checkbox]), textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  const windows = Object.keys(config.windows);
  let handled = true;
  if (key === "ArrowUp" || key === "ArrowRight") stepSlice(1);
  else if (key === "ArrowDown" || key === "ArrowLeft") stepSlice(-1);
  else if (key === "PageUp") stepSlice(10);
  else if (key === "PageDown") stepSlice(-10);
  else if (/^[1-9]$/.test(key) && windows[Number(key) - 1]) setWindow(windows[Number(key) - 1]);
  else if (VIEW_KEYS[key.toLowerCase()]) setView(VIEW_KEYS[key.toLowerCase()]);
  else if (LAYER_KEYS[key.toLowerCase()]) toggleKind(LAYER_KEYS[key.toLowerCase()]);
  else if (key === "t") toggleRenderTile();
  else if (key === "[" || key === "]") stepOutlineWidth(key === "]" ? 1 : -1);
  else if (key === "?" || key === "h") toggleHelp();
  else handled = false;
  if (handled) event.preventDefault();
}

function stepOutlineWidth(step) {
  const slider = document.getElementById("outline-width");
  const width = Math.min(OUTLINE_WIDTHS.at(-1), Math.max(OUTLINE_WIDTHS[0], state.outlineWidth + step));
  slider.value = String(width);
  setOutlineWidth(width);
}

function toggleHelp() {
  const help = document.getElementById("keys-help");
  help.hidden = !help.hidden;
  document.getElementById("keys-button").setAttribute("aria-expanded", String(!help.hidden));
}

function describeResolution() {
  const text = document.getElementById("resolution");
  const full = document.getElementById("full-res");
  const region = document.getElementById("region-res");
  const whole = document.getElementById("whole-scan");
  if (state.region) {
    text.textContent = "Full resolution of a region";
  } else if (state.level === "full" || config.factor === 1) {
    text.textContent = "Full resolution";
  } else {
    const factor = config.levels.find((l) => l.level === state.level)?.factor ?? config.factor;
    text.textContent = factor > 1 ? `Preview (1 voxel per ${factor}³)` : "Full resolution";
  }
  const isPreview = !state.region && state.level !== "full" && config.factor > 1;
  full.hidden = !(isPreview && config.fullAllowed);
  region.hidden = !(config.factor > 1) || Boolean(state.region);
  whole.hidden = !(state.region || (state.level === "full" && config.factor > 1));
}

function structureAt(location) {
  // The topmost visible label layer with a structure under the crosshair names it.
  for (let i = nv.volumes.length - 1; i >= 0; i--) {
    const layer = config.layers.find((l) => l.volume === nv.volumes[i]);
    if (!layer || !layer.visible || !LABEL_KINDS.has(layer.kind)) continue;
    const value = Math.round(location.values[i]?.value ?? 0);
    if (value > 0 && byId.has(value)) return { structure: byId.get(value), layer };
  }
  return null;
}

function onLocation(location) {
  const ctIndex = nv.volumes.indexOf(layerOf("ct").volume);
  const value = location.values[ctIndex]?.value;
  const [x, y, z] = location.mm;
  const found = structureAt(location);
  const uncertainty = config.layers.find((l) => l.kind === "uncertainty" && l.volume && l.visible);
  const parts = [
    `CT ${Number.isFinite(value) ? value.toFixed(0) : "–"}${state.level !== "full" && !state.region && config.factor > 1 ? " (preview mean)" : ""}`,
    found ? `${found.structure.display_name} (${found.layer.title})` : "no structure",
    `x ${x.toFixed(2)} y ${y.toFixed(2)} z ${z.toFixed(2)} mm`,
  ];
  if (uncertainty) {
    const u = location.values[nv.volumes.indexOf(uncertainty.volume)]?.value ?? 0;
    parts.push(`uncertainty ${((100 * u) / 255).toFixed(0)} %`);
  }
  const readout = document.getElementById("readout");
  readout.textContent = parts.join(" · ");
  readout.dataset.structure = found ? found.structure.name : "";
  state.crosshairMm = [x, y, z];
}

function goTo(mm) {
  nv.scene.crosshairPos = nv.mm2frac(mm);
  nv.createOnLocationChange();
  nv.drawScene();
}

function buildLayerPanel(layers = config.layers) {
  const container = document.getElementById("layers");
  for (const layer of layers) {
    layer.visible = DEFAULT_ON.has(layer.kind);
    const row = document.createElement("div");
    row.className = "layer-row";
    row.dataset.layer = layer.key;
    row.dataset.kind = layer.kind;
    const id = `layer-${layer.key}`;
    row.innerHTML = `<input type="checkbox" id="${id}"><label for="${id}"></label><input type="range" min="0" max="1" step="0.05" aria-label="Opacity">`;
    const [box, label, slider] = row.children;
    label.textContent = layer.title;
    if (layer.description) label.title = layer.description; // says which consensus is shown
    box.checked = layer.visible;
    box.disabled = layer.kind === "ct";
    slider.value = String(layer.kind === "ct" ? 1 : DEFAULT_OPACITY[layer.kind]);
    slider.hidden = layer.kind === "ct";
    box.title = layer.kind === "ct" ? "The scan itself (always shown)" : `Show or hide ${layer.title}`;
    slider.title = `Opacity of ${layer.title}`;
    box.addEventListener("change", () => showLayer(layer, box.checked));
    slider.addEventListener("input", () => setLayerOpacity(layer, Number(slider.value)));
    container.append(row);
  }
}

function buildStructurePanel() {
  const container = document.getElementById("structures");
  const present = new Set(config.volumes.map((v) => v.structure_id));
  for (const s of structures) {
    if (s.id === 0) continue;
    const label = document.createElement("label");
    label.dataset.structure = s.name;
    label.innerHTML = `<input type="checkbox" checked><span class="swatch" style="background:${s.colour}"></span>`;
    label.append(document.createTextNode(s.display_name));
    if (present.size && !present.has(s.id)) label.classList.add("muted");
    label.firstElementChild.addEventListener("change", (event) => {
      if (event.target.checked) hidden.delete(s.id);
      else hidden.add(s.id);
      refreshLabels().catch(report);
    });
    container.append(label);
  }
}

function buildMetastasisPanel() {
  const bars = Object.entries(config.metastasisCounts).filter(([, count]) => count > 0).map(([organ, count]) => ({
    label: byName.get(organ)?.display_name ?? (organ === "none" ? "Outside organs" : organ),
    value: count,
    colour: byName.get(organ)?.colour ?? "#9aa6b8",
  }));
  const panel = document.getElementById("metastases");
  const looked = Object.values(config.metastasisCounts).some((count) => count !== null);
  barChart(panel, bars, {
    empty: looked ? "No metastases found where the model looked." : "Metastases were not assessed in this scan.",
    title: "metastases per organ",
  });
  // "Not assessed" is not 0: name the organs the model did not look in (or the scan does not show).
  const unassessed = Object.entries(config.metastasisCounts)
    .filter(([, count]) => count === null)
    .map(([organ]) => byName.get(organ)?.display_name ?? organ);
  // A 0 is "none this size or larger": say from what size each searched organ's count runs.
  const from = Object.entries(config.metastasesFoundFromMm ?? {})
    .filter(([organ]) => config.metastasisCounts[organ] != null)
    .map(([organ, mm]) => `${byName.get(organ)?.display_name ?? organ} from ${mm} mm`);
  if (from.length) {
    const note = document.createElement("p");
    note.className = "muted metastases-found-from";
    note.title = "Measured on held-out scans: smaller metastases are not found, so a count of 0 means none this size or larger.";
    note.textContent = `Counted from this diameter: ${from.join(", ")}; smaller ones are not found.`;
    panel.append(note);
  }
  if (unassessed.length) {
    const note = document.createElement("p");
    note.className = "muted metastases-not-assessed";
    note.title = "The model does not look for metastases in these organs, or the scan does not show them.";
    note.textContent = `Not assessed: ${unassessed.join(", ")}.`;
    panel.append(note);
  }
}

const labelledLesions = new Set(); // lesions with a 3D marker already

function buildLesionPanel() {
  const container = document.getElementById("lesions");
  container.replaceChildren();
  if (!config.lesions.length) {
    container.innerHTML = '<p class="muted">No lesions found.</p>';
    return;
  }
  const table = document.createElement("table");
  table.className = "data";
  table.innerHTML = "<thead><tr><th>#</th><th>Kind</th><th>Organ</th><th class='num'>mm³</th><th></th></tr></thead><tbody></tbody>";
  for (const lesion of config.lesions) {
    const kind = byId.get(lesion.structure_id)?.display_name ?? "Lesion";
    const organ = byName.get(lesion.organ_name)?.display_name ?? lesion.organ_name;
    const row = document.createElement("tr");
    row.dataset.lesion = lesion.id;
    row.dataset.review = lesion.review || "";
    row.innerHTML =
      "<td></td><td></td><td></td><td class='num'></td><td class='lesion-actions'>" +
      "<button type='button' class='goto' title='Centre the views on this lesion'>Go to</button> " +
      "<button type='button' class='exclude' title='Not a lesion (the bed, a fold of skin): take it out of volumes, counts and charts'>Exclude</button> " +
      "<button type='button' class='confirm' title='A real lesion: record that a person checked it'>Confirm</button></td>";
    row.children[0].textContent = lesion.index;
    row.children[1].textContent = kind;
    row.children[2].textContent = organ;
    row.children[3].textContent = lesion.volume_mm3.toFixed(2);
    if (lesion.review) {
      row.classList.add(`lesion-${lesion.review}`);
      row.title = `${lesion.review === "excluded" ? "Excluded" : "Confirmed"}: ${lesion.review_reason}`;
    }
    // To a voxel of the lesion itself: a curved lesion's centroid can lie in air.
    row.querySelector(".goto").addEventListener("click", () => goTo(lesion.anchor_mm ?? lesion.centroid_mm));
    row.querySelector(".exclude").addEventListener("click", () => reviewLesion(lesion, "excluded"));
    row.querySelector(".confirm").addEventListener("click", () => reviewLesion(lesion, "confirmed"));
    table.tBodies[0].append(row);
    // A marker in the 3D view, named by its organ.
    const colour = byId.get(lesion.structure_id)?.rgb.map((c) => c / 255) ?? [1, 0, 1];
    if (labelledLesions.has(lesion.id)) continue;
    labelledLesions.add(lesion.id);
    nv.addLabel(`${kind} ${lesion.index}: ${organ}`, { textScale: 0.6, textColor: [1, 1, 1, 1], bulletScale: 0.5, bulletColor: [...colour, 1], lineWidth: 0 }, lesion.centroid_mm);
  }
  container.append(table);
}

// The 3D render joins the multiplanar view only on request (button or T): without a GPU,
// ray-casting on every redraw blocks the page (2.7 s at the first frame, measured in issue 21).
async function toggleRenderTile() {
  const on = nv.opts.multiplanarShowRender !== 2;
  nv.opts.multiplanarShowRender = on ? 2 : 0; // SHOW_RENDER.AUTO (the free tile) or NEVER
  if (on) hook.renderShown = true;
  document.getElementById("render-tile").setAttribute("aria-pressed", String(on));
  await frameDrawn();
  document.body.dataset.renderTile = on ? "on" : "off";
}

async function reload(level, region) {
  state.level = level;
  state.region = region;
  state.manual = true; // the researcher chose: the progressive load stops here
  try {
    await loadAll();
  } catch (error) {
    setStatus(`Could not load the volumes: ${error.message}`);
    hook.errors.push(String(error));
  }
}

function wireToolbar() {
  for (const button of document.querySelectorAll("[data-window]")) button.addEventListener("click", () => setWindow(button.dataset.window));
  for (const button of document.querySelectorAll("[data-view]")) button.addEventListener("click", () => setView(button.dataset.view));
  document.getElementById("full-res").addEventListener("click", () => reload("full", null));
  document.getElementById("region-res").addEventListener("click", () => reload("full", state.crosshairMm ?? null));
  document.getElementById("whole-scan").addEventListener("click", () => reload("preview", null));
  document.getElementById("keys-button").addEventListener("click", toggleHelp);
  document.getElementById("render-tile").addEventListener("click", toggleRenderTile);
  const width = document.getElementById("outline-width");
  width.value = String(state.outlineWidth);
  width.addEventListener("change", () => setOutlineWidth(Number(width.value)));
  document.addEventListener("keydown", onKey);
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

// Exclude or confirm one lesion, with a reason; the panel, volumes and counts follow at once.
async function reviewLesion(lesion, decision) {
  const question = decision === "excluded" ? "Why is this not a lesion (for example: on the animal bed)?" : "Why is it confirmed?";
  const reason = window.prompt(question, lesion.review_reason || "");
  if (reason === null) return;
  const response = await fetch(lesion.review_url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), Accept: "application/json" },
    body: JSON.stringify({ decision, reason }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    setStatus(body.detail ?? `The server answered ${response.status}.`);
    return;
  }
  const fresh = await (await fetch(`/scans/${config.scanId}/viewer.json`, { headers: { Accept: "application/json" } })).json();
  Object.assign(config, { volumes: fresh.volumes, lesions: fresh.lesions, metastasisCounts: fresh.metastasisCounts, volumeSources: fresh.volumeSources });
  buildLesionPanel();
  buildMetastasisPanel();
  renderVolumes(fresh.volumes);
  document.body.dataset.lesionReviewed = String(Date.now());
}

function renderVolumes(volumes) {
  // The side panel's volume table, as the server renders it (scan.html), for runs that end later.
  const card = document.getElementById("volumes-card");
  card.querySelector(":scope > table, :scope > p")?.remove();
  const table = document.createElement("table");
  table.className = "data";
  table.id = "volumes";
  table.innerHTML = "<thead><tr><th>Structure</th><th class='num'>mm³</th><th class='num'>range</th></tr></thead><tbody></tbody>";
  for (const v of volumes) {
    const row = document.createElement("tr");
    row.dataset.structure = v.name;
    row.innerHTML = "<td><span class='swatch'></span></td><td class='num'></td><td class='num muted'></td>";
    row.querySelector(".swatch").style.background = v.colour;
    row.children[0].append(document.createTextNode(v.display_name));
    row.children[1].textContent = v.volume_mm3.toFixed(1);
    row.children[2].textContent = `${v.low_mm3.toFixed(1)}–${v.high_mm3.toFixed(1)}`;
    table.tBodies[0].append(row);
  }
  card.append(table);
  renderSources(config.volumeSources ?? []);
}

// Where the table's numbers come from, per task: the model, or a person's correction of it.
function renderSources(sources) {
  const box = document.getElementById("volume-sources");
  if (!box) return;
  box.replaceChildren();
  for (const s of sources) {
    const line = document.createElement("p");
    line.className = `muted volume-source${s.corrected ? " corrected" : ""}`;
    line.dataset.prediction = s.prediction_id;
    line.textContent = `${s.task}: ${s.source}`;
    box.append(line);
  }
}

// A segmentation that ends while the page is open: jobs.js announces it; fetch the scan's viewer
// configuration again and add the new overlays, volumes, lesions and counts, without a reload.
async function addFinishedRun(job) {
  if (job.state !== "succeeded" || job.scan !== config.scanId) return;
  const response = await fetch(`/scans/${config.scanId}/viewer.json`, { headers: { Accept: "application/json" } });
  if (!response.ok) return;
  const fresh = await response.json();
  const known = new Set(config.layers.map((l) => l.key));
  const added = fresh.layers.filter((l) => !known.has(l.key));
  config.layers.push(...added);
  Object.assign(config, { volumes: fresh.volumes, lesions: fresh.lesions, metastasisCounts: fresh.metastasisCounts, volumeSources: fresh.volumeSources, corrections: fresh.corrections });
  fillCorrectionPicker();
  buildLayerPanel(added);
  buildMetastasisPanel();
  buildLesionPanel();
  renderVolumes(fresh.volumes);
  for (const layer of added) {
    if (!layer.visible) continue;
    const volume = await readVolume(layer, true);
    layer.volume = volume;
    await redraw(() => nv.addVolume(volume));
  }
  hook.overlayDrawn = config.layers.some((l) => l.kind === "labels" && l.volume);
  document.body.dataset.overlaysUpdated = String(Date.now());
}

document.addEventListener("labseg:job-finished", (event) => {
  addFinishedRun(event.detail).catch((error) => hook.errors.push(String(error)));
});

// Correction with NiiVue's drawing tools: the prediction (or its newest correction) becomes the
// drawing at full resolution; pen, filled pen and eraser paint one canonical structure at a time
// (the model's own, in their canonical colours); undo steps back; Save uploads the whole drawing
// as NIfTI on the scan's grid to /api/predictions/{id}/corrections, a new annotation version.
// The prediction itself is never changed.
const draw = { active: null, tool: "pen", hiddenLayers: [] };

function drawLut() {
  // NiiVue's drawing palette: the canonical colours at the canonical ids, background clear.
  return {
    R: structures.map((s) => s.rgb[0]),
    G: structures.map((s) => s.rgb[1]),
    B: structures.map((s) => s.rgb[2]),
    A: structures.map((s) => (s.id === 0 ? 0 : 255)),
    I: structures.map((s) => s.id),
    labels: structures.map((s) => s.display_name),
  };
}

function correctionMessage(text, isError = false) {
  const box = document.getElementById("correct-message");
  box.textContent = text;
  box.classList.toggle("error", isError);
}

function applyTool() {
  const value = Number(document.getElementById("draw-label").value);
  if (draw.tool === "erase") nv.setPenValue(0, false);
  else nv.setPenValue(value, draw.tool === "fill");
  for (const button of document.querySelectorAll("[data-tool]")) button.setAttribute("aria-pressed", String(button.dataset.tool === draw.tool));
  const swatch = document.getElementById("draw-swatch");
  swatch.style.background = draw.tool === "erase" ? "transparent" : byId.get(value)?.colour ?? "#888";
}

function fillLabelPicker(correction) {
  const select = document.getElementById("draw-label");
  select.replaceChildren();
  for (const id of correction.structureIds) {
    const s = byId.get(id);
    if (!s) continue;
    const option = document.createElement("option");
    option.value = String(id);
    option.textContent = s.display_name;
    option.dataset.structure = s.name;
    select.append(option);
  }
}

async function startCorrection() {
  const picker = document.getElementById("correct-prediction");
  const correction = config.corrections.find((c) => String(c.predictionId) === picker.value);
  if (!correction) return;
  if (config.factor > 1 && (state.level !== "full" || state.region)) {
    if (!config.fullAllowed) {
      correctionMessage("This scan is too large to correct in the browser: download it for 3D Slicer or ITK-SNAP and upload the edit as an annotation.", true);
      return;
    }
    correctionMessage("Loading full resolution to draw on…");
    await reload("full", null);
  }
  correctionMessage("Loading the segmentation to correct…");
  const image = await NVImage.loadFromUrl(NVImageFromUrlOptions(correction.startUrl, "", "start.nii.gz"));
  nv.setDrawColormap(drawLut());
  if (!nv.loadDrawing(image)) {
    correctionMessage("The segmentation does not lie on the scan's grid, so it cannot be drawn on here.", true);
    return;
  }
  draw.active = correction;
  // The drawing replaces the model's layer on screen while it is edited.
  draw.hiddenLayers = config.layers.filter((l) => l.kind === "labels" && l.visible);
  for (const layer of draw.hiddenLayers) await showLayer(layer, false);
  fillLabelPicker(correction);
  nv.setDrawOpacity(0.6);
  nv.opts.penSize = 3;
  nv.setDrawingEnabled(true);
  draw.tool = "pen";
  applyTool();
  document.getElementById("correct-start").hidden = true;
  document.getElementById("correct-tools").hidden = false;
  correctionMessage(`Drawing over ${correction.source}. Drag in a 2D view to paint; Save stores version ${correction.version + 1}.`);
  document.body.dataset.drawing = "1";
}

async function stopCorrection() {
  nv.setDrawingEnabled(false);
  nv.closeDrawing();
  for (const layer of draw.hiddenLayers) await showLayer(layer, true);
  draw.hiddenLayers = [];
  draw.active = null;
  document.getElementById("correct-start").hidden = false;
  document.getElementById("correct-tools").hidden = true;
  delete document.body.dataset.drawing;
}

async function gzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Response(stream).blob();
}

async function saveCorrection() {
  const correction = draw.active;
  if (!correction) return;
  correctionMessage("Saving…");
  const bytes = await nv.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });
  if (!(bytes instanceof Uint8Array)) {
    correctionMessage("Nothing to save: the drawing is empty.", true);
    return;
  }
  const body = new FormData();
  body.append("file", await gzip(bytes), "correction.nii.gz");
  const response = await fetch(correction.saveUrl, { method: "POST", body, headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" } });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    correctionMessage(answer.detail ?? `The server answered ${response.status}.`, true);
    return;
  }
  const fresh = await (await fetch(`/scans/${config.scanId}/viewer.json`, { headers: { Accept: "application/json" } })).json();
  Object.assign(config, { volumes: fresh.volumes, volumeSources: fresh.volumeSources, corrections: fresh.corrections });
  renderVolumes(fresh.volumes);
  fillCorrectionPicker();
  await stopCorrection();
  correctionMessage(`Saved as version ${answer.version}: volumes, CSVs and charts now use ${answer.source}.`);
  document.body.dataset.correctionSaved = String(answer.id);
}

function fillCorrectionPicker() {
  const picker = document.getElementById("correct-prediction");
  if (!picker) return;
  const chosen = picker.value;
  picker.replaceChildren();
  for (const c of config.corrections ?? []) {
    const option = document.createElement("option");
    option.value = String(c.predictionId);
    option.textContent = `${c.task} · ${c.source}`;
    picker.append(option);
  }
  if (chosen) picker.value = chosen;
  document.getElementById("correct-begin").disabled = !(config.corrections ?? []).length;
}

function wireCorrection() {
  if (!document.getElementById("correct-card")) return;
  fillCorrectionPicker();
  const fail = (error) => {
    correctionMessage(`Could not correct: ${error.message}`, true);
    hook.errors.push(String(error));
  };
  document.getElementById("correct-begin").addEventListener("click", () => startCorrection().catch(fail));
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => {
      draw.tool = button.dataset.tool;
      applyTool();
    });
  }
  document.getElementById("draw-label").addEventListener("change", applyTool);
  document.getElementById("draw-undo").addEventListener("click", () => nv.drawUndo());
  document.getElementById("draw-save").addEventListener("click", () => saveCorrection().catch(fail));
  document.getElementById("draw-cancel").addEventListener("click", () => stopCorrection().then(() => correctionMessage("")).catch(fail));
}

async function main() {
  buildLayerPanel();
  buildStructurePanel();
  buildMetastasisPanel();
  renderSources(config.volumeSources ?? []);
  wireToolbar();
  wireCorrection();
  // The page's layout is final before the canvas first draws: a panel or toolbar line that changes
  // it afterwards resizes the canvas, and NiiVue then draws a second full frame (150-200 ms without
  // a GPU) straight after the first.
  buildLesionPanel();
  describeResolution();
  // The first level's volumes are read while NiiVue sets up WebGL (its shaders), not after.
  const first = readLevel();
  first.reading.catch(() => {}); // reported below, by loadAll
  await nv.attachToCanvas(document.getElementById("gl"));
  keepThroughContextLoss(nv, hook);
  hook.marks.canvasMs = performance.now();
  nv.onLocationChange = onLocation;
  try {
    await loadAll({ level: first });
  } catch (error) {
    setStatus(`Could not load the scan: ${error.message}`);
    hook.errors.push(String(error));
    return;
  }
  hook.firstFrameMs = performance.now();
  hook.overlayDrawn = config.layers.some((l) => l.kind === "labels" && l.volume);
  nv.createOnLocationChange();
  document.body.dataset.viewerReady = "1";
  try {
    await refine();
  } catch (error) {
    setStatus(`Could not load the finer levels: ${error.message}`);
    hook.errors.push(String(error));
  }
}

main();
