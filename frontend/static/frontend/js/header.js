// Header behaviour: the lab switcher submits as soon as another lab is chosen.
for (const select of document.querySelectorAll("select[data-autosubmit]")) {
  select.addEventListener("change", () => select.form.submit());
}
