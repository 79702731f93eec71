// Mouse page: tumor volume with its uncertainty range against days since the first scan, with a
// humane endpoint line the researcher can move (a warning appears when the mouse crosses it), and
// organ volumes over time in the canonical colours.
import { lineChart } from "./charts.js";

const data = JSON.parse(document.getElementById("mouse-data").textContent);
const mouse = data.series[0];
const colours = Object.fromEntries(data.structures.map((s) => [s.name, s.colour]));
const names = Object.fromEntries(data.structures.map((s) => [s.name, s.display_name]));
const input = document.getElementById("endpoint");
const warning = document.getElementById("endpoint-warning");

function drawTumor() {
  const endpoint = Number(input.value) > 0 ? Number(input.value) : 1500;
  const point = (p) => ({
    x: p.days, y: p.volume_mm3, low: p.low_mm3, high: p.high_mm3,
    title: `${p.time_point} (day ${p.days}): ${p.volume_mm3.toFixed(1)} uL, range ${p.low_mm3.toFixed(1)}–${p.high_mm3.toFixed(1)} (${p.source})`,
  });
  const series = [{ name: "model", colour: colours.tumor, points: mouse.tumor.map(point) }];
  if (mouse.tumor_annotated.length) {
    series.push({ name: "approved annotations (consensus)", colour: "#2f6feb", points: mouse.tumor_annotated.map(point) });
  }
  lineChart(
    document.getElementById("tumor-chart"),
    series,
    { xLabel: "days since first scan", yLabel: "tumor volume (uL)", refLine: { y: endpoint, label: `humane endpoint ${endpoint} uL` }, empty: "No tumor volume yet.", title: "tumor volume over time" },
  );
  const crossed = [...mouse.tumor, ...mouse.tumor_annotated].sort((a, b) => a.days - b.days).find((p) => p.volume_mm3 >= endpoint);
  warning.hidden = !crossed;
  if (crossed) {
    warning.textContent = `${mouse.mouse} reached the humane endpoint of ${endpoint} uL at ${crossed.time_point} (day ${crossed.days}): ${crossed.volume_mm3.toFixed(1)} uL.`;
  }
}

input.addEventListener("input", drawTumor);
drawTumor();
lineChart(
  document.getElementById("organ-chart"),
  Object.entries(mouse.organs).map(([name, pts]) => ({
    name: names[name] ?? name,
    colour: colours[name] ?? "#888",
    points: pts.map(([x, y, low, high]) => ({ x, y, low, high })),
  })),
  { xLabel: "days since first scan", yLabel: "organ volume (mm³)", legend: true, empty: "No organ volumes yet.", title: "organ volumes over time" },
);
