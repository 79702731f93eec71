// Live job progress: every element [data-job] whose state is queued or running is polled through
// GET /api/jobs/{id}/ until it finishes; the badge, progress bar and error follow the server.
const ACTIVE = new Set(["queued", "running"]);
const POLL_MS = 1500;

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

async function poll(element) {
  const id = element.dataset.job;
  while (ACTIVE.has(element.dataset.state)) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    let response;
    try {
      response = await fetch(`/api/jobs/${id}/`, { headers: { Accept: "application/json" } });
    } catch {
      continue; // the network blinked: try again at the next tick
    }
    if (!response.ok) return;
    const job = await response.json();
    render(element, job);
    if (!ACTIVE.has(job.state)) {
      document.dispatchEvent(new CustomEvent("labseg:job-finished", { detail: job }));
    }
  }
}

export function watchJobs(root = document) {
  for (const element of root.querySelectorAll("[data-job]")) {
    if (ACTIVE.has(element.dataset.state) && !element.dataset.watched) {
      element.dataset.watched = "1";
      poll(element);
    }
  }
}

watchJobs();
