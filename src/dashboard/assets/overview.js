// Overview: the range's spend, today's, avoided spend, requests and errors,
// and spend over time stacked by a dimension.
//
// Admin API calls per load (and per change of range, grouping or bucket):
// 4, in parallel:
//   GET /admin/spend/totals?group_by=none&from&to          the range's numbers
//   GET /admin/spend/totals?group_by=none&from=<UTC midnight>   today's spend
//   GET /admin/spend/series?group_by=<g>&bucket=<b>&top=8&from&to   the chart
//   GET /admin/spend/totals?group_by=<g>&order=cost&limit=8&from&to the legend

import { get } from "./api.js";
import { stackedBars, PALETTE, OTHER_COLOR } from "./chart.js";
import {
  h, fill, money, count, stat, errorBox, loading, rangeControls, rangeFromParams, resolveRange,
  rangeParams, bucketFor, BUCKET_MS, parseHash, setHashParams, fmtTime, fmtInt,
} from "./ui.js";

export const GROUPS = [
  ["customer", "Customer"],
  ["team", "Team"],
  ["key", "Key"],
  ["model", "Model"],
  ["provider", "Provider"],
  ["tags", "Tag"],
];
const TOP_GROUPS = 8;
const OTHER = "(other)";

export function mount(el) {
  const { params } = parseHash();
  const state = {
    range: rangeFromParams(params, "24h"),
    group: GROUPS.some((g) => g[0] === params.get("group")) ? params.get("group") : "key",
    bucket: ["minute", "hour", "day"].includes(params.get("bucket")) ? params.get("bucket") : "hour",
  };
  let chart = null;
  let seq = 0;

  const head = h("div", { class: "page-head" });
  const statsEl = h("div", { class: "stats", testid: "overview-stats" });
  const chartPanel = h("section", { class: "panel" });
  const breakdown = h("section", { class: "panel" });
  fill(el, head, statsEl, chartPanel, breakdown);

  function groupSelect() {
    return h("label", { class: "field" }, h("span", {}, "Stack by"),
      h("select", { testid: "group-by", name: "group-by", onchange: (e) => { state.group = e.target.value; load(); } },
        GROUPS.map(([v, label]) => h("option", { value: v, selected: v === state.group }, label))));
  }
  function bucketSelect(effective) {
    return h("label", { class: "field" }, h("span", {}, "Bucket"),
      h("select", { testid: "bucket", name: "bucket", onchange: (e) => { state.bucket = e.target.value; load(); } },
        ["minute", "hour", "day"].map((b) => h("option", { value: b, selected: b === effective }, b))));
  }

  async function load() {
    const my = ++seq;
    const { from, to } = resolveRange(state.range);
    const bucket = bucketFor(from, to, state.bucket);
    setHashParams({ ...rangeParams(state.range), group: state.group, bucket: state.bucket });
    // Today is today's whatever the range: since 00:00 UTC, up to now.
    const now = Date.now();
    const today = new Date(now);
    const midnight = Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate());
    const todayTo = state.range.preset ? to : now + 1;

    fill(head,
      h("h1", {}, "Overview"),
      h("div", { class: "toolbar" }, rangeControls(state.range, (r) => { state.range = r; load(); })));
    fill(statsEl, loading());
    if (chart) chart.destroy(), (chart = null);
    fill(chartPanel, h("div", { class: "panel-head" }, h("h2", {}, "Spend over time"),
      h("div", { class: "toolbar" }, groupSelect(), bucketSelect(bucket))), loading());
    fill(breakdown, loading());

    const range = { from, to };
    const results = await Promise.allSettled([
      get("/admin/spend/totals", { group_by: "none", ...range }),
      get("/admin/spend/totals", { group_by: "none", from: midnight, to: todayTo }),
      get("/admin/spend/series", { group_by: state.group, bucket, top: TOP_GROUPS, ...range }),
      get("/admin/spend/totals", { group_by: state.group, order: "cost", limit: TOP_GROUPS, ...range }),
    ]);
    if (my !== seq) return; // a newer load is under way
    const [totals, todays, series, byGroup] = results;

    if (totals.status === "fulfilled" && todays.status === "fulfilled") {
      const t = totals.value.data[0] || { cost_usd: "0", avoided_usd: "0", requests: 0, errors: 0 };
      const d = todays.value.data[0] || { cost_usd: "0" };
      const spend = money("total-spend", t.cost_usd);
      spend.setAttribute("data-from", from);
      spend.setAttribute("data-to", to);
      const todayEl = money("today-spend", d.cost_usd);
      todayEl.setAttribute("data-from", midnight);
      todayEl.setAttribute("data-to", todayTo);
      const rate = t.requests ? ((100 * (t.errors || 0)) / t.requests).toFixed(1) + "% of requests" : "";
      fill(statsEl,
        stat("Spend in range", spend, `${fmtTime(from, { short: true })} → ${fmtTime(to, { short: true })} UTC`),
        stat("Spend today", todayEl, "since 00:00 UTC"),
        stat("Avoided by the cache", money("avoided-spend", t.avoided_usd), t.cache_hits != null ? `${fmtInt(t.cache_hits)} cache hits` : ""),
        stat("Requests", count("total-requests", t.requests), ""),
        stat("Errors", count("total-errors", t.errors ?? 0), rate));
    } else {
      fill(statsEl, errorBox((totals.reason || todays.reason)));
    }

    const colors = new Map();
    if (series.status === "fulfilled") {
      const box = h("div", { class: "chart", testid: "spend-chart", "data-group-by": state.group, "data-bucket": bucket });
      chartPanel.append(box);
      chartPanel.querySelector(".loading")?.remove();
      if (bucket !== state.bucket) {
        chartPanel.insertBefore(h("p", { class: "muted small" }, `Shown by ${bucket}: ${state.bucket} buckets over this range would be too many.`), box);
      }
      const { xs, groups } = stackSeries(series.value.data, from, to, bucket);
      box.setAttribute("data-groups", JSON.stringify(groups.map((g) => g.label)));
      for (const g of groups) colors.set(g.label, g.color);
      if (!groups.length) box.append(h("div", { class: "empty" }, "No spend in this range."));
      else chart = stackedBars(box, { xs, groups, bucketSeconds: BUCKET_MS[bucket] / 1e3 });
    } else {
      chartPanel.querySelector(".loading")?.remove();
      chartPanel.append(errorBox(series.reason));
    }

    if (byGroup.status === "fulfilled") {
      const label = GROUPS.find((g) => g[0] === state.group)[1];
      const rows = byGroup.value.data;
      fill(breakdown, h("div", { class: "panel-head" }, h("h2", {}, `Top ${label.toLowerCase()}s in range`)),
        h("div", { class: "table-wrap" }, h("table", { testid: "overview-breakdown" },
          h("thead", {}, h("tr", {}, h("th", {}, label), h("th", { class: "r" }, "Spend"), h("th", { class: "r" }, "Requests"), h("th", { class: "r" }, "Errors"), h("th", { class: "r" }, "Avoided"))),
          h("tbody", {}, rows.length ? rows.map((r) => h("tr", { testid: `breakdown-${r.group}` },
            h("td", {}, swatch(colors.get(r.group === "" || r.group == null ? "(none)" : r.group)), r.group === "" || r.group == null ? h("span", { class: "muted" }, "(none)") : r.group),
            h("td", { class: "r" }, money("breakdown-cost", r.cost_usd)),
            h("td", { class: "r" }, count("breakdown-requests", r.requests)),
            h("td", { class: "r" }, count("breakdown-errors", r.errors ?? 0)),
            h("td", { class: "r" }, money("breakdown-avoided", r.avoided_usd)))) :
            h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No requests in this range."))))));
    } else {
      fill(breakdown, errorBox(byGroup.reason));
    }
  }

  load();
  return { unmount() { seq++; if (chart) chart.destroy(); } };
}

function swatch(color) {
  const el = h("span", { class: "swatch", "aria-hidden": "true" });
  el.style.background = color || OTHER_COLOR; // CSSOM: allowed by the CSP
  return el;
}

/** The series' points as one value per bucket (empty buckets 0) per group,
 * the biggest group at the bottom and "(other)" on top. */
export function stackSeries(points, from, to, bucket) {
  const w = BUCKET_MS[bucket];
  const first = Math.floor(from / w) * w;
  const last = Math.floor((to - 1) / w) * w;
  const xs = [];
  for (let t = first; t <= last; t += w) xs.push(t / 1e3);
  const index = new Map(xs.map((x, i) => [x, i]));
  const byGroup = new Map();
  for (const p of points) {
    const i = index.get(Date.parse(p.bucket_start) / 1e3);
    if (i === undefined) continue;
    const name = p.group === "" || p.group == null ? "(none)" : p.group;
    if (!byGroup.has(name)) byGroup.set(name, { label: name, values: new Array(xs.length).fill(0), total: 0 });
    const g = byGroup.get(name);
    const v = Number(p.cost_usd) || 0;
    g.values[i] += v;
    g.total += v;
  }
  const groups = [...byGroup.values()].sort((a, b) => (a.label === OTHER) - (b.label === OTHER) || b.total - a.total);
  groups.forEach((g, i) => (g.color = g.label === OTHER ? OTHER_COLOR : PALETTE[i % PALETTE.length]));
  return { xs, groups };
}

