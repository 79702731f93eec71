// Study QC page: Dice per structure as box plots, drawn in the browser by the one charting path
// (frontend charts.js). The numbers are the page's own (studies.dice_groups), also at
// /api/studies/{id}/dice.json.
import { boxPlot } from "../frontend/js/charts.js";

const { groups, labels } = JSON.parse(document.getElementById("dice-data").textContent);
boxPlot(
  document.getElementById("dice-chart"),
  groups,
  [
    { name: "annotator vs annotator", colour: "#5a5a5a" },
    { name: "model vs annotator", colour: "#286ec8" },
  ],
  { labels, yLabel: "Dice", title: "Dice per structure", empty: "No Dice figures yet: compute a consensus on the study's scans first." },
);
document.body.dataset.chartsDrawn = "true";
