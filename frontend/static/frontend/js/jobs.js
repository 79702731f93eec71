// Live job progress: every element [data-job] whose state is queued or running follows the server
// through ONE request per page, GET /api/jobs/?ids=1,2,3, every POLL_MS while any job is active
// (slower after a quiet minute, paused while the tab is hidden). The badge, progress bar and error
// follow the server; a job that ends is announced as "labseg:job-finished" (the viewer adds its
// overlays without a reload).
const ACTIVE = new Set(["queued", "running"]);
const POLL_MS = 2000;
const QUIET_POLL_MS = 8000;
const QUIET_AFTER_MS = 60000;

function render(element, job) {
  element.dataset.state = job.state;
  const badge = element.querySelector(".badge");
  badge.className = `badge ${job.state}`;
  badge.textContent = job.state.charAt(0).toUpperCase() + job.state.slice(1);
  let bar = element.querySelector(".progress");
  if (ACTIVE.has(job.state)) {
    if (!bar) {
      bar = document.createElement("div");
      bar.className = "progress";
      bar.append(document.createElement("span"));
      element.append(bar);
    }
    bar.title = job.stage || "";
    bar.firstElementChild.style.width = `${job.progress ?? 0}%`;
  } else if (bar) {
    bar.remove();
  }
  if (job.state === "failed" && job.error && !element.querySelector(".job-error")) {
    const error = document.createElement("div");
    error.className = "error job-error";
    error.textContent = job.error;
    element.append(error);
  }
}

function activeElements() {
  return [...document.querySelectorAll("[data-job]")].filter((element) => ACTIVE.has(element.dataset.state));
}

let polling = false;

async function pollAll() {
  if (polling) return;
  polling = true;
  let lastChange = performance.now();
  try {
    for (;;) {
      const elements = activeElements();
      if (!elements.length) return;
      const quiet = performance.now() - lastChange > QUIET_AFTER_MS;
      await new Promise((resolve) => setTimeout(resolve, quiet ? QUIET_POLL_MS : POLL_MS));
      if (document.hidden) continue;
      const ids = [...new Set(elements.map((element) => element.dataset.job))];
      let jobs;
      try {
        const response = await fetch(`/api/jobs/?limit=${ids.length}&ids=${ids.join(",")}`, {
          headers: { Accept: "application/json" },
        });
        if (!response.ok) return;
        const body = await response.json();
        jobs = body.results ?? body;
      } catch {
        continue; // the network blinked: try again at the next tick
      }
      for (const job of jobs) {
        for (const element of document.querySelectorAll(`[data-job="${job.id}"]`)) {
          const before = `${element.dataset.state}:${element.querySelector(".progress span")?.style.width ?? ""}`;
          const wasActive = ACTIVE.has(element.dataset.state);
          render(element, job);
          if (before !== `${job.state}:${element.querySelector(".progress span")?.style.width ?? ""}`) {
            lastChange = performance.now();
          }
          if (wasActive && !ACTIVE.has(job.state)) {
            document.dispatchEvent(new CustomEvent("labseg:job-finished", { detail: job }));
          }
        }
      }
    }
  } finally {
    polling = false;
  }
}

export function watchJobs() {
  pollAll();
}

watchJobs();
