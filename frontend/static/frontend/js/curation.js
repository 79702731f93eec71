// Curation by a lab's admins (scans/curation.py and scans/deletion.py through their API): rename,
// set the cohort, merge, move, delete to the bin and restore. Every form[data-api] sends its named
// fields as JSON with its data-method (POST by default); a refusal shows its plain message beside
// the form; success goes to data-next (a URL, or "reload"); data-confirm asks first. Selects with
// data-mice are filled with the study's other mice from /api/mice/?study=.
function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function send(form) {
  const error = form.querySelector(".error");
  if (error) error.textContent = "";
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
  const body = {};
  for (const field of form.querySelectorAll("[name]")) {
    if (field.value === "" && field.dataset.optional !== undefined) continue;
    body[field.name] = field.dataset.number !== undefined ? Number(field.value) : field.value;
  }
  const method = form.dataset.method || "POST";
  const response = await fetch(form.dataset.api, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), Accept: "application/json" },
    body: method === "DELETE" ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (error) error.textContent = answer.detail ?? `The server answered ${response.status}.`;
    return;
  }
  document.body.dataset.curated = String(Date.now());
  let next = form.dataset.next || "reload";
  if (next.includes("{id}")) next = next.replace("{id}", String(answer.id ?? ""));
  if (next === "reload") window.location.reload();
  else window.location.assign(next);
}

async function fillMice(select) {
  const response = await fetch(`/api/mice/?study=${select.dataset.mice}&limit=1000`, { headers: { Accept: "application/json" } });
  if (!response.ok) return;
  const body = await response.json();
  const skip = select.dataset.skip;
  for (const mouse of body.results ?? body) {
    if (String(mouse.id) === skip) continue;
    const option = document.createElement("option");
    option.value = String(mouse.id);
    option.textContent = mouse.identifier;
    select.append(option);
  }
}

for (const form of document.querySelectorAll("form[data-api]")) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(form).catch((error) => {
      const box = form.querySelector(".error");
      if (box) box.textContent = String(error.message ?? error);
    });
  });
}
for (const select of document.querySelectorAll("select[data-mice]")) fillMice(select);
