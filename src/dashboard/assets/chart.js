// Charts, drawn by uPlot (vendored, see vendor/VENDORED). Amounts are drawn
// from Number(decimal string): display only; exact values are in the tables.

import { fmtUsd, fmtTime, h } from "./ui.js";

export const PALETTE = ["#3b6ea5", "#e08a3c", "#4f9a62", "#c2544f", "#7e68b0", "#8c6d52", "#cf7fb5", "#5aa5b8", "#b9a44c", "#6d7f99"];
export const OTHER_COLOR = "#b8bec7";

const AXIS = { stroke: "#6b7280", grid: { stroke: "#eceef1", width: 1 }, ticks: { stroke: "#e2e5e9", width: 1 }, font: "11px system-ui, sans-serif" };

function utc(ts) {
  return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
}

// Tick spacings of a time axis, seconds: whole minutes, hours, days.
const TIME_INCRS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800, 1209600, 2592000];

const pad = (n) => String(n).padStart(2, "0");

/** Time ticks in UTC, 24-hour; the date under the first tick of each day. */
function timeAxis(u, splits, axisIdx, space, incr) {
  let prevDay = null;
  return splits.map((ts) => {
    if (ts == null) return "";
    const d = new Date(ts * 1e3);
    const day = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
    const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
    const label = incr >= 86400 ? day.slice(5) : prevDay !== day ? `${hm}\n${day.slice(5)}` : hm;
    prevDay = day;
    return label;
  });
}

const usdAxis = (u, splits) => splits.map((v) => (v == null ? "" : fmtUsd(String(v))));

/** Keeps a chart as wide as its container. Returns a function that stops. */
function autosize(u, el, height) {
  const ro = new ResizeObserver(() => {
    const w = Math.max(320, Math.floor(el.clientWidth));
    if (w !== u.width) u.setSize({ width: w, height });
  });
  ro.observe(el);
  return () => ro.disconnect();
}

/** Stacked bars: one series per group over bucket starts `xs` (unix
 * seconds); `groups` [{label, values}] bottom first. Returns {destroy}. */
export function stackedBars(el, { xs, groups, height = 280, bucketSeconds }) {
  el.replaceChildren();
  if (typeof uPlot === "undefined") {
    el.append(h("div", { class: "error" }, "The chart library did not load."));
    return { destroy() {} };
  }
  const n = xs.length;
  // Cumulative tops, bottom group first; drawn top of the stack first so
  // each lower bar paints over the part of the taller one below it.
  const acc = new Array(n).fill(0);
  const tops = groups.map((g) => {
    for (let i = 0; i < n; i++) acc[i] += g.values[i] || 0;
    return acc.slice();
  });
  const order = groups.map((_, i) => i).reverse();
  const bars = uPlot.paths.bars({ size: [0.72, 160], gap: 1 });
  const series = [{ label: "Bucket", value: (u, v) => (v == null ? "range total" : fmtTime(v * 1e3, { seconds: false })) }];
  const data = [xs];
  for (const i of order) {
    const g = groups[i];
    const color = g.color;
    series.push({
      label: g.label,
      stroke: color,
      fill: color,
      width: 0,
      paths: bars,
      points: { show: false },
      // The legend shows the group's own amount, not the stack's top.
      // Without a cursor: the group's total over the range.
      value: (u, v, si, idx) => fmtUsd(String(idx == null ? g.total ?? 0 : g.values[idx] || 0)),
    });
    data.push(tops[i]);
  }
  const width = Math.max(320, el.clientWidth || 900);
  const opts = {
    width,
    height,
    tzDate: utc,
    padding: [12, 20, 0, 4],
    cursor: { points: { show: false }, drag: { x: false, y: false } },
    legend: { show: true, live: true },
    scales: { x: { time: true, range: (u, min, max) => [min - bucketSeconds / 2, max + bucketSeconds / 2] }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] } },
    axes: [{ ...AXIS, values: timeAxis, size: 44, incrs: TIME_INCRS.filter((s) => s >= bucketSeconds) }, { ...AXIS, values: usdAxis, size: 70 }],
    series,
  };
  const u = new uPlot(opts, data, el);
  const stop = autosize(u, el, height);
  return { destroy() { stop(); u.destroy(); } };
}

/** A legend value: at the cursor, or without one the series' last point. */
function legendValue(list) {
  const last = list.length ? list[list.length - 1].remaining : null;
  return (u, v, si, idx) => {
    const x = idx == null ? last : v;
    return x == null ? "—" : fmtUsd(String(x));
  };
}

/** A budget's burn-down: what remains over its period (a line), and the
 * projection from now to exhaustion (dashed). `points` [{t (ms), remaining}]
 * up to now; `projection` [{t, remaining}] two points or none; `end` the
 * period's end (ms) or null. Returns {destroy}. */
export function burnDown(el, { points, projection, end, limit, height = 240, label = "Remaining" }) {
  el.replaceChildren();
  if (typeof uPlot === "undefined") {
    el.append(h("div", { class: "error" }, "The chart library did not load."));
    return { destroy() {} };
  }
  const times = [...new Set([...points.map((p) => p.t), ...projection.map((p) => p.t), ...(end ? [end] : [])])].sort((a, b) => a - b);
  const at = (list) => {
    const m = new Map(list.map((p) => [p.t, p.remaining]));
    return times.map((t) => (m.has(t) ? m.get(t) : null));
  };
  const data = [times.map((t) => t / 1e3), at(points), at(projection)];
  const series = [
    { label: "Time", value: (u, v) => (v == null ? "—" : fmtTime(v * 1e3, { seconds: false })) },
    { label, stroke: "#3b6ea5", width: 2, fill: "rgba(59,110,165,0.08)", points: { show: false }, spanGaps: true, value: legendValue(points) },
    { label: "Projected", stroke: "#c2544f", width: 1.5, dash: [6, 4], points: { show: false }, spanGaps: true, value: legendValue(projection) },
  ];
  const top = Math.max(limit || 0, ...points.map((p) => p.remaining ?? 0)) || 1;
  const opts = {
    width: Math.max(320, el.clientWidth || 700),
    height,
    tzDate: utc,
    padding: [12, 20, 0, 4],
    cursor: { drag: { x: false, y: false } },
    legend: { show: true, live: true },
    scales: { x: { time: true }, y: { range: (u, min) => [Math.min(0, min ?? 0), top * 1.08] } },
    axes: [{ ...AXIS, values: timeAxis, size: 44, incrs: TIME_INCRS }, { ...AXIS, values: usdAxis, size: 70 }],
    series,
  };
  const u = new uPlot(opts, data, el);
  const stop = autosize(u, el, height);
  return { destroy() { stop(); u.destroy(); } };
}
