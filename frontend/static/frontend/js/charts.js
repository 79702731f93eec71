// Small inline-SVG charts (no chart library): a line chart with uncertainty bands and an optional
// horizontal reference line, and a horizontal bar chart. Sizes are in SVG user units; the SVG
// scales to its container's width.
const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function niceTicks(min, max, count = 5) {
  if (!(max > min)) max = min + 1;
  const raw = (max - min) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || power * 10;
  const ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function fmt(value) {
  const abs = Math.abs(value);
  if (abs >= 1000) return value.toLocaleString("en-US", { maximumFractionDigits: 0 });
  if (abs >= 10) return value.toFixed(0);
  if (abs >= 1) return value.toFixed(1);
  return value.toPrecision(2);
}

/**
 * series: [{name, colour, points: [{x, y, low?, high?, title?}]}]
 * options: {xLabel, yLabel, refLine: {y, label} | null, width, height, yMin}
 */
export function lineChart(container, series, options = {}) {
  const width = options.width ?? 640;
  const height = options.height ?? 300;
  const m = { top: 16, right: 24, bottom: 44, left: 64 };
  const points = series.flatMap((s) => s.points);
  container.replaceChildren();
  container.classList.add("chart");
  if (!points.length) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = options.empty ?? "No data yet.";
    container.append(empty);
    return null;
  }
  const xs = points.map((p) => p.x);
  const ys = points.flatMap((p) => [p.y, p.low ?? p.y, p.high ?? p.y]);
  if (options.refLine) ys.push(options.refLine.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const y0 = options.yMin ?? Math.min(0, ...ys);
  const y1 = Math.max(...ys) * 1.08 || 1;
  const sx = (x) => m.left + ((x - x0) / (x1 - x0)) * (width - m.left - m.right);
  const sy = (y) => height - m.bottom - ((y - y0) / (y1 - y0)) * (height - m.top - m.bottom);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": options.title ?? "chart" });
  const grid = el("g", { class: "grid" });
  const axis = el("g", { class: "axis" });
  for (const t of niceTicks(y0, y1)) {
    grid.append(el("line", { x1: m.left, x2: width - m.right, y1: sy(t), y2: sy(t) }));
    axis.append(el("text", { x: m.left - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  for (const t of niceTicks(x0, x1, 6)) {
    axis.append(el("line", { x1: sx(t), x2: sx(t), y1: height - m.bottom, y2: height - m.bottom + 4 }));
    axis.append(el("text", { x: sx(t), y: height - m.bottom + 16, "text-anchor": "middle" }, fmt(t)));
  }
  axis.append(el("line", { x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom }));
  axis.append(el("line", { x1: m.left, x2: m.left, y1: m.top, y2: height - m.bottom }));
  if (options.xLabel) axis.append(el("text", { x: (m.left + width - m.right) / 2, y: height - 8, "text-anchor": "middle" }, options.xLabel));
  if (options.yLabel) {
    axis.append(el("text", { x: 14, y: (m.top + height - m.bottom) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(m.top + height - m.bottom) / 2})` }, options.yLabel));
  }
  svg.append(grid, axis);
  for (const s of series) {
    const pts = [...s.points].sort((a, b) => a.x - b.x);
    const g = el("g", { class: "series", "data-name": s.name });
    if (pts.some((p) => p.low !== undefined && p.high !== undefined) && pts.length > 1) {
      const upper = pts.map((p) => `${sx(p.x)},${sy(p.high ?? p.y)}`);
      const lower = pts.map((p) => `${sx(p.x)},${sy(p.low ?? p.y)}`).reverse();
      g.append(el("polygon", { points: [...upper, ...lower].join(" "), fill: s.colour, "fill-opacity": 0.15, stroke: "none" }));
    }
    for (const p of pts) {
      if (p.low !== undefined && p.high !== undefined && p.high > p.low) {
        g.append(el("line", { x1: sx(p.x), x2: sx(p.x), y1: sy(p.low), y2: sy(p.high), stroke: s.colour, "stroke-width": 1.2 }));
      }
    }
    if (pts.length > 1) {
      g.append(el("polyline", { points: pts.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" "), fill: "none", stroke: s.colour, "stroke-width": 2 }));
    }
    for (const p of pts) {
      const dot = el("circle", { cx: sx(p.x), cy: sy(p.y), r: 3.5, fill: s.colour });
      dot.append(el("title", {}, p.title ?? `${s.name}: ${fmt(p.y)} at ${fmt(p.x)}`));
      g.append(dot);
    }
    svg.append(g);
  }
  if (options.refLine) {
    const y = sy(options.refLine.y);
    svg.append(el("line", { class: "endpoint", x1: m.left, x2: width - m.right, y1: y, y2: y }));
    svg.append(el("text", { x: width - m.right, y: y - 5, "text-anchor": "end", fill: "#b42318" }, options.refLine.label));
  }
  container.append(svg);
  if (series.length > 1 || options.legend) {
    const legend = document.createElement("div");
    legend.className = "legend";
    for (const s of series) {
      const item = document.createElement("span");
      item.innerHTML = `<span class="swatch" style="background:${s.colour}"></span>`;
      item.append(document.createTextNode(s.name));
      legend.append(item);
    }
    container.append(legend);
  }
  return svg;
}

/** bars: [{label, value, colour}] drawn as horizontal bars with their values. */
export function barChart(container, bars, options = {}) {
  container.replaceChildren();
  container.classList.add("chart");
  if (!bars.length) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = options.empty ?? "Nothing to show.";
    container.append(empty);
    return null;
  }
  const width = options.width ?? 320;
  const row = 22;
  const labelWidth = options.labelWidth ?? 110;
  const height = bars.length * row + 8;
  const max = Math.max(...bars.map((b) => b.value), 1);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": options.title ?? "bar chart" });
  bars.forEach((bar, i) => {
    const y = 4 + i * row;
    const w = ((width - labelWidth - 40) * bar.value) / max;
    const g = el("g", { class: "bar", "data-label": bar.label, "data-value": bar.value });
    g.append(el("text", { x: labelWidth - 6, y: y + 14, "text-anchor": "end" }, bar.label));
    g.append(el("rect", { x: labelWidth, y: y + 3, width: Math.max(w, 1), height: row - 8, rx: 3, fill: bar.colour ?? "#2f6feb" }));
    g.append(el("text", { x: labelWidth + Math.max(w, 1) + 5, y: y + 14 }, String(bar.value)));
    svg.append(g);
  });
  container.append(svg);
  return svg;
}

/** The value at fraction q (0..1) of sorted values, interpolated linearly (numpy's default). */
export function quantile(sorted, q) {
  const at = (sorted.length - 1) * q;
  const low = Math.floor(at);
  const high = Math.ceil(at);
  return sorted[low] + (sorted[high] - sorted[low]) * (at - low);
}

/** Tukey's box: quartiles, median, whiskers at the furthest values within 1.5 IQR, outliers. */
export function tukey(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const [q1, median, q3] = [0.25, 0.5, 0.75].map((q) => quantile(sorted, q));
  const iqr = q3 - q1;
  const inside = sorted.filter((v) => v >= q1 - 1.5 * iqr && v <= q3 + 1.5 * iqr);
  const low = inside[0];
  const high = inside[inside.length - 1];
  return { q1, median, q3, low, high, outliers: sorted.filter((v) => v < low || v > high) };
}

/**
 * Box plots on a 0..1 axis (Dice): for each category (name, label), one box per group.
 * data: {category: {group: [values]}}; groups: [{name, colour}]; options: {labels, yLabel, title}.
 * The SVG is as wide as its categories need and scales to its container; the legend is HTML under
 * it, so neither the title nor the legend can be clipped at any name length.
 */
export function boxPlot(container, data, groups, options = {}) {
  container.replaceChildren();
  container.classList.add("chart");
  const categories = Object.keys(data);
  if (!categories.length) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = options.empty ?? "No data yet.";
    container.append(empty);
    return null;
  }
  const perCategory = 40 + 36 * groups.length;
  const m = { top: 12, right: 16, bottom: 40, left: 52 };
  const width = m.left + m.right + perCategory * categories.length;
  const height = options.height ?? 300;
  const sy = (v) => m.top + (1 - v) * (height - m.top - m.bottom);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": options.title ?? "box plot", style: `width:${width}px;max-width:100%` }); // its own size: text as large as the page's
  const grid = el("g", { class: "grid" });
  const axis = el("g", { class: "axis" });
  for (const t of niceTicks(0, 1)) {
    grid.append(el("line", { x1: m.left, x2: width - m.right, y1: sy(t), y2: sy(t) }));
    axis.append(el("text", { x: m.left - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  axis.append(el("line", { x1: m.left, x2: m.left, y1: m.top, y2: height - m.bottom }));
  if (options.yLabel) {
    const mid = (m.top + height - m.bottom) / 2;
    axis.append(el("text", { x: 12, y: mid, "text-anchor": "middle", transform: `rotate(-90 12 ${mid})` }, options.yLabel));
  }
  svg.append(grid, axis);
  categories.forEach((category, c) => {
    const x0 = m.left + c * perCategory + 20;
    const label = options.labels?.[category] ?? category;
    const name = el("text", { x: x0 + (perCategory - 40) / 2, y: height - m.bottom + 18, "text-anchor": "middle", class: "category" }, label);
    name.append(el("title", {}, label));
    svg.append(name);
    groups.forEach((group, g) => {
      const values = data[category][group.name] ?? [];
      if (!values.length) return;
      const b = tukey(values);
      const x = x0 + g * 36;
      const centre = x + 14;
      const box = el("g", { class: "box", "data-category": category, "data-group": group.name, "data-median": b.median });
      box.append(el("title", {}, `${label}, ${group.name}: median ${b.median.toFixed(3)} (n = ${values.length})`));
      box.append(el("line", { x1: centre, x2: centre, y1: sy(b.high), y2: sy(b.q3), stroke: group.colour }));
      box.append(el("line", { x1: centre, x2: centre, y1: sy(b.q1), y2: sy(b.low), stroke: group.colour }));
      for (const w of [b.low, b.high]) box.append(el("line", { x1: centre - 7, x2: centre + 7, y1: sy(w), y2: sy(w), stroke: group.colour }));
      box.append(el("rect", { x, y: sy(b.q3), width: 28, height: Math.max(1, sy(b.q1) - sy(b.q3)), fill: group.colour, "fill-opacity": 0.3, stroke: group.colour }));
      box.append(el("line", { x1: x, x2: x + 28, y1: sy(b.median), y2: sy(b.median), stroke: group.colour, "stroke-width": 3 }));
      for (const v of b.outliers) box.append(el("circle", { cx: centre, cy: sy(v), r: 2.5, fill: "none", stroke: group.colour }));
      svg.append(box);
    });
  });
  container.append(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const group of groups) {
    const item = document.createElement("span");
    item.innerHTML = `<span class="swatch" style="background:${group.colour}"></span>`;
    item.append(document.createTextNode(group.name));
    legend.append(item);
  }
  container.append(legend);
  return svg;
}

export const PALETTE = ["#2f6feb", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#5c940d", "#862e9c"];
