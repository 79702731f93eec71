// Upload page: drop files or a folder in the tumor database layout, check the parsed mouse and
// time point, then send each file through the resumable chunk endpoints (scans/uploads.py):
//   POST /api/uploads/ {filename, size_bytes}            -> {id, offset, size_bytes}
//   PUT  /api/uploads/{id}/  Content-Range: bytes a-b/n   -> {offset}   (409 tells the right offset)
//   GET  /api/uploads/{id}/                               -> {offset, size_bytes}
//   POST /api/uploads/{id}/complete/ {sha256, study, mouse, time_point, modality} -> scan
// A dropped connection is retried with backoff from the offset the server reports, and the upload
// id is kept in localStorage so a reloaded page resumes too. Errors are shown in the server's words.
import { Sha256 } from "./sha256.js";

const config = JSON.parse(document.getElementById("upload-config").textContent);
const NIFTI = /\.nii(\.gz)?$/i;
const ANNOTATOR = /^annotator[_-]?([a-z0-9]+)[_-]/i;
// Label maps by name: tumor database ground truths and STAPLE merges, Slicer/ITK-SNAP segmentations.
// They are annotations of the scan of the same mouse and time point, never scans.
const LABEL_MAP = [
  [/^groundtruth[_-]/i, "GroundTruth"],
  [/^staple[_-]/i, "STAPLE"],
  [/[_-]seg(mentation)?([_.-]|$)|label/i, "Labels"],
];
// Mouse and time point as the tumor database names them: M02_8d, M11_24h, M3-0h.
const MOUSE_TIME = /(?:^|[^a-z0-9])(m\d+)[_-](\d+(?:\.\d+)?(?:min|h|d|w))(?=[^a-z0-9]|$)/i;
const SUBTLE_MAX_BYTES = 512 * 1024 * 1024; // hash in one go below this; stream above it
const RETRY_MS = [500, 1000, 2000, 4000, 8000];

const queue = [];
const $ = (selector) => document.querySelector(selector);

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : document.querySelector("[name=csrfmiddlewaretoken]").value;
}

export function serverMessage(body, status) {
  // DRF answers {"detail": "..."} or {"field": ["...", ...]}; show the words, not the structure.
  if (body && typeof body === "object") {
    if (typeof body.detail === "string") return body.detail;
    const parts = [];
    for (const [field, value] of Object.entries(body)) {
      const text = Array.isArray(value) ? value.join(" ") : String(value);
      parts.push(field === "non_field_errors" ? text : `${field}: ${text}`);
    }
    if (parts.length) return parts.join("; ");
  }
  if (typeof body === "string" && body.trim()) return body.trim().slice(0, 300);
  return `the server answered ${status}`;
}

export function parseName(path) {
  // path: "Dataset 1/M01_M02_8d/M02_8d/CT_M02_8d.nii.gz" (a folder drop) or just a file name.
  const parts = path.split("/");
  const name = parts[parts.length - 1];
  let found = name.match(MOUSE_TIME);
  for (let i = parts.length - 2; !found && i >= 0; i--) found = parts[i].match(MOUSE_TIME);
  const annotator = name.match(ANNOTATOR);
  const labelMap = LABEL_MAP.find(([pattern]) => pattern.test(name));
  return {
    mouse: found ? found[1].toUpperCase() : "",
    timePoint: found ? found[2].toLowerCase() : "",
    annotator: annotator ? annotator[1].toUpperCase() : labelMap ? labelMap[1] : null,
  };
}

function formatBytes(n) {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(n / 1024))} kB`;
}

function addFile(file, path) {
  if (!NIFTI.test(file.name)) return;
  const parsed = parseName(path || file.name);
  const item = {
    file,
    path: path || file.name,
    mouse: parsed.mouse || $("#default-mouse").value.trim(),
    timePoint: parsed.timePoint || $("#default-time-point").value.trim(),
    annotator: parsed.annotator,
    state: "ready",
    offset: 0,
  };
  queue.push(item);
  renderRow(item);
  updateOverall();
}

function renderRow(item) {
  const row = document.createElement("tr");
  row.className = "queue-row";
  row.dataset.name = item.file.name;
  const kind = item.annotator ? `Annotation by ${item.annotator}` : "Scan";
  row.innerHTML = `
    <td><div class="fname"></div><div class="muted"></div></td>
    <td><input class="mouse" list="mouse-list" aria-label="Mouse"></td>
    <td><input class="time-point" list="time-point-list" aria-label="Time point"></td>
    <td class="num size"></td>
    <td><div class="progress"><span></span></div></td>
    <td class="msg muted">Ready</td>
    <td><button type="button" class="remove" aria-label="Remove">✕</button></td>`;
  row.querySelector(".fname").textContent = item.path;
  row.querySelector(".muted").textContent = kind;
  row.querySelector(".size").textContent = formatBytes(item.file.size);
  const mouse = row.querySelector(".mouse");
  const timePoint = row.querySelector(".time-point");
  mouse.value = item.mouse;
  timePoint.value = item.timePoint;
  mouse.addEventListener("input", () => (item.mouse = mouse.value.trim()));
  timePoint.addEventListener("input", () => (item.timePoint = timePoint.value.trim()));
  row.querySelector(".remove").addEventListener("click", () => {
    if (item.state === "sending") return;
    queue.splice(queue.indexOf(item), 1);
    row.remove();
    updateOverall();
  });
  item.row = row;
  $("#queue tbody").append(row);
  $("#queue").hidden = false;
  $("#send").disabled = false;
}

function setStatus(item, text, kind = "muted") {
  const cell = item.row.querySelector(".msg");
  cell.className = `msg ${kind}`;
  cell.textContent = text;
}

function setProgress(item, offset) {
  item.offset = offset;
  const bar = item.row.querySelector(".progress");
  bar.firstElementChild.style.width = `${((100 * offset) / Math.max(1, item.file.size)).toFixed(1)}%`;
  bar.setAttribute("aria-valuenow", String(offset));
  updateOverall();
}

function updateOverall() {
  // Bytes of refused files do not count as sent: the server kept none of them.
  const total = queue.reduce((sum, item) => sum + item.file.size, 0);
  const sent = { done: (item) => item.file.size, failed: () => 0 };
  const done = queue.reduce((sum, item) => sum + (sent[item.state]?.(item) ?? item.offset), 0);
  const percent = total ? (100 * done) / total : 0;
  $("#overall-bar").style.width = `${percent.toFixed(1)}%`;
  $("#overall-text").textContent = total
    ? `${formatBytes(done)} of ${formatBytes(total)} (${percent.toFixed(0)} %) · ${queue.filter((i) => i.state === "done").length} of ${queue.length} files`
    : "No files yet";
}

async function api(method, url, { json, body, headers = {} } = {}) {
  const init = { method, headers: { "X-CSRFToken": csrfToken(), Accept: "application/json", ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    // not JSON: keep the text, it is shown as it is
  }
  return { status: response.status, ok: response.ok, data };
}

class Refused extends Error {}

function resumeKey(item) {
  return `labseg-upload:${item.file.name}:${item.file.size}:${item.file.lastModified}`;
}

async function openSession(item) {
  const saved = localStorage.getItem(resumeKey(item));
  if (saved) {
    const { ok, data } = await api("GET", `${config.uploadsUrl}${saved}/`);
    if (ok && data.size_bytes === item.file.size) return { id: saved, offset: data.offset };
    localStorage.removeItem(resumeKey(item));
  }
  const { ok, status, data } = await api("POST", config.uploadsUrl, {
    // The lab is named so its storage quota is checked (and the size reserved) before any byte goes.
    json: { filename: item.file.name, size_bytes: item.file.size, lab: config.lab },
  });
  if (!ok) throw new Refused(serverMessage(data, status));
  localStorage.setItem(resumeKey(item), data.id);
  return { id: data.id, offset: data.offset || 0 };
}

async function sendChunks(item, session) {
  let offset = session.offset;
  let failures = 0;
  setProgress(item, offset);
  while (offset < item.file.size) {
    const end = Math.min(offset + config.chunkBytes, item.file.size);
    let result;
    try {
      result = await api("PUT", `${config.uploadsUrl}${session.id}/`, {
        body: item.file.slice(offset, end),
        headers: {
          "Content-Type": "application/octet-stream",
          "Content-Range": `bytes ${offset}-${end - 1}/${item.file.size}`,
        },
      });
    } catch {
      // The connection dropped: wait, ask the server where it got to, and go on from there.
      failures += 1;
      if (failures > RETRY_MS.length) throw new Refused("the connection to the server was lost; press Send to resume");
      setStatus(item, `Connection lost, resuming from ${formatBytes(offset)}…`, "warning");
      item.row.dataset.resumed = String(Number(item.row.dataset.resumed || 0) + 1);
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS[failures - 1]));
      try {
        const probe = await api("GET", `${config.uploadsUrl}${session.id}/`);
        if (probe.ok) offset = probe.data.offset;
      } catch {
        // still offline: the next PUT attempt will find out
      }
      continue;
    }
    if (result.status === 409 && typeof result.data.offset === "number") {
      offset = result.data.offset; // the server has more (or less) than we thought
      continue;
    }
    if (!result.ok) throw new Refused(serverMessage(result.data, result.status));
    failures = 0;
    offset = result.data.offset ?? end;
    setStatus(item, `Sending… ${formatBytes(offset)} of ${formatBytes(item.file.size)}`);
    setProgress(item, offset);
  }
}

async function sha256Of(file, onProgress) {
  if (file.size <= SUBTLE_MAX_BYTES && crypto.subtle) {
    const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  const hash = new Sha256();
  const step = 16 * 1024 * 1024;
  for (let start = 0; start < file.size; start += step) {
    hash.update(new Uint8Array(await file.slice(start, start + step).arrayBuffer()));
    onProgress(start + step);
  }
  return hash.hex();
}

async function sendScan(item, fields) {
  const session = await openSession(item);
  // Hash while the chunks travel: both read the same file, neither waits for the other.
  const digest = sha256Of(item.file, () => {});
  await sendChunks(item, session);
  setStatus(item, "Checking the file…");
  const { ok, status, data } = await api("POST", `${config.uploadsUrl}${session.id}/complete/`, {
    json: { sha256: await digest, ...fields },
  });
  localStorage.removeItem(resumeKey(item));
  if (!ok) throw new Refused(serverMessage(data, status));
  return data;
}

async function sendAnnotation(item, scan) {
  const form = new FormData();
  form.append("file", item.file, item.file.name);
  form.append("annotator", item.annotator);
  // Tumor database annotators' and STAPLE files label the tumor 1 and everything else 0; other
  // label maps (ground truths, segmentations) carry canonical structure ids, the server's default.
  if (/^(?!GroundTruth$|Labels$)/.test(item.annotator)) form.append("structures", JSON.stringify({ tumor: 1 }));
  setProgress(item, 0);
  const { ok, status, data } = await api("POST", `/api/scans/${scan.id}/annotations/`, { body: form });
  if (!ok) throw new Refused(serverMessage(data, status));
  setProgress(item, item.file.size);
  return data;
}

async function existingScan(study, item) {
  // The scan this annotation belongs to, uploaded before: one scan of the mouse at that time point.
  const query = new URLSearchParams({ study_name: study, mouse_name: item.mouse, time_point: item.timePoint });
  const { ok, status, data } = await api("GET", `/api/scans/?${query}`);
  if (!ok) throw new Refused(serverMessage(data, status));
  const found = data.results ?? data;
  if (found.length === 1) return found[0];
  if (!found.length) throw new Refused(`no scan of ${item.mouse} at ${item.timePoint} in study "${study}": upload the scan too, or its annotation on the scan's page`);
  throw new Refused(`${found.length} scans of ${item.mouse} at ${item.timePoint} in study "${study}": attach this annotation on the right scan's page`);
}

async function sendAll() {
  const study = $("#study").value.trim();
  const modality = $("#modality").value;
  if (!study) {
    $("#form-error").textContent = "Name the study these scans belong to.";
    return;
  }
  $("#form-error").textContent = "";
  $("#send").disabled = true;
  const scans = new Map(); // "M02|8d" -> scan JSON, for the annotations of the same mouse and time
  const pending = queue.filter((item) => item.state !== "done");
  // Scans first, so that each annotation finds its scan.
  pending.sort((a, b) => Number(Boolean(a.annotator)) - Number(Boolean(b.annotator)));
  for (const item of pending) {
    const key = `${item.mouse}|${item.timePoint}`;
    if (!item.mouse || !item.timePoint) {
      item.state = "failed";
      setStatus(item, "Give the mouse and the time point (such as M02 and 8d).", "error");
      continue;
    }
    item.state = "sending";
    item.row.querySelector(".progress").className = "progress";
    try {
      if (item.annotator) {
        const scan = scans.get(key) ?? (await existingScan(study, item));
        await sendAnnotation(item, scan);
        setStatus(item, `Annotation saved for scan ${scan.id}`, "ok");
      } else {
        const scan = await sendScan(item, { study, mouse: item.mouse, time_point: item.timePoint, modality, lab: config.lab });
        scans.set(key, scan);
        const link = document.createElement("a");
        link.href = `/scans/${scan.id}/`;
        link.textContent = "open the scan";
        setStatus(item, "Uploaded · ", "ok");
        item.row.querySelector(".msg").append(link);
        item.row.dataset.scanId = scan.id;
      }
      item.state = "done";
      item.row.querySelector(".progress").classList.add("done");
      setProgress(item, item.file.size);
    } catch (error) {
      item.state = "failed";
      item.row.querySelector(".progress").classList.add("failed");
      setStatus(item, error instanceof Refused ? error.message : `Upload failed: ${error.message}`, "error");
    }
  }
  updateOverall();
  $("#send").disabled = !queue.some((item) => item.state !== "done");
  document.body.dataset.uploadFinished = String(Date.now());
}

async function walkEntry(entry, prefix = "") {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    addFile(file, prefix + file.name);
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await walkEntry(child, `${prefix}${entry.name}/`);
    }
  }
}

function setUp() {
  const zone = $("#dropzone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const entries = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
    if (entries.length) {
      for (const entry of entries) await walkEntry(entry);
    } else {
      for (const file of event.dataTransfer.files) addFile(file);
    }
  });
  $("#files").addEventListener("change", (event) => {
    for (const file of event.target.files) addFile(file);
    event.target.value = "";
  });
  $("#folder").addEventListener("change", (event) => {
    for (const file of event.target.files) addFile(file, file.webkitRelativePath);
    event.target.value = "";
  });
  $("#send").addEventListener("click", sendAll);
  updateOverall();
}

setUp();
