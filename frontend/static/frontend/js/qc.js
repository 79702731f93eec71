// Quality check card on the scan page: a reviewer accepts or rejects a prediction the QC gate
// flagged (POST /api/predictions/{id}/qc). The answer's error is shown beside the buttons; on
// success the page reloads so charts and badges follow the decision.
function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

for (const form of document.querySelectorAll("form.qc-decide")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = form.querySelector(".error");
    error.textContent = "";
    const decision = event.submitter?.value;
    const response = await fetch(form.dataset.url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), Accept: "application/json" },
      body: JSON.stringify({ decision, note: form.elements.note.value }),
    });
    if (response.ok) {
      window.location.reload();
      return;
    }
    const body = await response.json().catch(() => ({}));
    error.textContent = body.detail ?? `The server answered ${response.status}.`;
  });
}
document.body.dataset.qcReady = "1";
