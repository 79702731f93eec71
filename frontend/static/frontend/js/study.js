// Study page: the per-cohort tumor volume chart (mean and spread per treatment arm against days
// since each mouse's first scan) and one line per mouse, with the humane endpoint drawn across.
import { lineChart, PALETTE } from "./charts.js";

const data = JSON.parse(document.getElementById("study-data").textContent);

function cohortSeries(series) {
  const byCohort = new Map();
  const corrected = new Set(); // cohort|day with at least one corrected volume
  for (const mouse of series) {
    if (!byCohort.has(mouse.cohort)) byCohort.set(mouse.cohort, new Map());
    const days = byCohort.get(mouse.cohort);
    for (const p of mouse.tumor) {
      const key = Math.round(p.days);
      if (!days.has(key)) days.set(key, []);
      days.get(key).push(p.volume_mm3);
      if (p.source.startsWith("corrected")) corrected.add(`${cohort}|${key}`);
    }
  }
  return [...byCohort.entries()].map(([cohort, days], i) => ({
    name: cohort,
    colour: PALETTE[i % PALETTE.length],
    points: [...days.entries()].map(([day, values]) => {
      const mean = values.reduce((a, b) => a + b, 0) / values.length;
      const sd = values.length > 1 ? Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / (values.length - 1)) : 0;
      return { x: day, y: mean, low: Math.max(0, mean - sd), high: mean + sd, title: `${cohort}, day ${day}: ${mean.toFixed(1)} ± ${sd.toFixed(1)} uL (n = ${values.length})${corrected.has(`${cohort}|${day}`) ? ", includes corrected segmentations" : ""}` };
    }),
  }));
}

const endpoint = { y: data.endpoint_ul, label: `humane endpoint ${data.endpoint_ul} uL` };
lineChart(document.getElementById("cohort-chart"), cohortSeries(data.series), {
  xLabel: "days since first scan",
  yLabel: "tumor volume (uL), mean ± SD",
  refLine: endpoint,
  legend: true,
  empty: "No tumor volumes yet: they appear when the tumor model has segmented the scans.",
  title: "tumor volume per cohort",
});
lineChart(
  document.getElementById("mouse-chart"),
  data.series.filter((m) => m.tumor.length).map((m, i) => ({
    name: m.mouse,
    colour: PALETTE[i % PALETTE.length],
    // The tooltip says where each number comes from: the model, or a person's correction of it.
    points: m.tumor.map((p) => ({ x: p.days, y: p.volume_mm3, low: p.low_mm3, high: p.high_mm3, title: `${m.mouse}, ${p.time_point} (day ${p.days}): ${p.volume_mm3.toFixed(1)} uL (${p.source})` })),
  })),
  { xLabel: "days since first scan", yLabel: "tumor volume (uL)", refLine: endpoint, legend: true, empty: "No tumor volumes yet.", title: "tumor volume per mouse" },
);
