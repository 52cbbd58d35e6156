// Budgets: every budget with spent, limit, remaining, reset time, burn rate
// and projected exhaustion, those at risk first (the API's order); the
// selected one's burn-down.
//
// Admin API calls per load: 2
//   GET /admin/budgets                 every budget (one call)
//   GET <the budget's series.path>     the selected budget's burn-down
// Selecting another budget: 1 (its series). Reset / top-up: the action,
// then the load again.

import { get, post, budgetPaths } from "./api.js";
import { burnDown } from "./chart.js";
import {
  h, fill, money, time, badge, errorBox, loading, confirmDialog, parseHash, setHashParams, fmtUsd, fmtRelative,
} from "./ui.js";

export const KIND_LABELS = {
  customer: "customer", team: "team", key: "key", provider: "provider", model: "model", tag: "tag",
  key_model: "key · model", team_model: "team · model", customer_model: "customer · model",
};

export function status(b) {
  if (b.blocked) return ["blocked", "bad", "Blocked"];
  if (b.at_risk) return ["at_risk", "warn", "At risk"];
  return ["ok", "ok", "OK"];
}

/** The fraction of the limit spent, 0..1 (null without a limit). */
export function usedFraction(b) {
  const limit = Number(b.limit_usd);
  if (!b.limit_usd || !(limit > 0)) return null;
  return Math.min(1, Math.max(0, Number(b.spent_usd) / limit));
}

export function usageBar(b) {
  const f = usedFraction(b);
  if (f === null) return h("span", { class: "muted small" }, "no limit");
  const bar = h("div", { class: `bar ${b.blocked || f >= 1 ? "bad" : b.at_risk || f >= 0.8 ? "warn" : ""}`, title: `${(f * 100).toFixed(1)}% spent` }, h("span", {}));
  bar.firstChild.style.width = `${(f * 100).toFixed(1)}%`;
  return bar;
}

export function mount(el) {
  let list = [];
  let total = 0;
  let selected = null; // [kind, name]
  let chart = null;
  let seq = 0;
  const { rest } = parseHash();
  if (rest.length >= 2) selected = [rest[0], rest.slice(1).join("/")];

  const tablePanel = h("section", {});
  const detail = h("section", { class: "panel", testid: "budget-detail" });
  fill(el, h("div", { class: "page-head" }, h("h1", {}, "Budgets"), h("span", { class: "muted" }, "At risk first; spend is the books' exact amount this period.")),
    h("div", { class: "split wide" }, tablePanel, detail));

  async function load() {
    const my = ++seq;
    fill(tablePanel, loading());
    let body;
    try {
      body = await get("/admin/budgets");
    } catch (e) {
      if (my === seq) fill(tablePanel, errorBox(e)), fill(detail);
      return;
    }
    if (my !== seq) return;
    list = body.data || [];
    total = body.total ?? list.length;
    if (!selected || !list.some((b) => b.kind === selected[0] && b.name === selected[1])) {
      selected = list.length ? [list[0].kind, list[0].name] : null;
    }
    renderTable();
    renderDetail();
  }

  function renderTable() {
    const rows = list.map((b) => {
      const [code, cls, text] = status(b);
      const isSel = selected && b.kind === selected[0] && b.name === selected[1];
      const tr = h("tr", {
        testid: `budget-${b.kind}-${b.name}`, class: `clickable${isSel ? " selected" : ""}`,
        "data-kind": b.kind, "data-name": b.name, "data-at-risk": String(!!b.at_risk), "data-blocked": String(!!b.blocked),
        tabindex: "0", "aria-selected": isSel ? "true" : "false",
        onclick: () => select(b), onkeydown: (e) => { if (e.key === "Enter") select(b); },
      },
      h("td", { class: "nowrap" }, h("div", {}, h("strong", {}, b.name)), h("div", { class: "muted small" }, KIND_LABELS[b.kind] || b.kind, b.mode ? ` · ${b.mode}` : "")),
      h("td", { class: "r" }, money("budget-spent", b.spent_usd)),
      h("td", { class: "r" }, money("budget-limit", b.limit_usd)),
      h("td", { class: "r" }, money("budget-remaining", b.remaining_usd), usageBar(b)),
      h("td", {}, time("budget-reset", b.reset_at, { short: true }), h("div", { class: "muted small" }, b.reset_at ? fmtRelative(b.reset_at) : "prepaid")),
      h("td", {}, time("budget-projection", b.projected_exhaustion, { short: true }), h("div", { class: "muted small" },
        b.projected_exhaustion ? fmtRelative(b.projected_exhaustion) : b.burn_usd_per_hour && Number(b.burn_usd_per_hour) > 0 ? "lasts the period" : "no recent spend")),
      h("td", {}, h("span", { testid: "budget-status", "data-value": code }, badge(text, cls))));
      return tr;
    });
    fill(tablePanel, h("div", { class: "table-wrap" }, h("table", { testid: "budgets-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Budget"), h("th", { class: "r" }, "Spent"), h("th", { class: "r" }, "Limit"),
        h("th", { class: "r" }, "Remaining"), h("th", {}, "Resets (UTC)"), h("th", {}, "Runs out (UTC)"), h("th", {}, "Status"))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No budgets are configured."))))),
      total > list.length ? h("p", { class: "muted small", testid: "budgets-more" }, `Showing the ${list.length} most at risk of ${total} budgets.`) : null);
  }

  function select(b) {
    selected = [b.kind, b.name];
    setHashParams({}, selected);
    for (const tr of tablePanel.querySelectorAll("tbody tr")) {
      const on = tr.dataset.kind === b.kind && tr.dataset.name === b.name;
      tr.classList.toggle("selected", on);
      tr.setAttribute("aria-selected", on ? "true" : "false");
    }
    renderDetail();
  }

  async function renderDetail() {
    if (chart) chart.destroy(), (chart = null);
    const b = selected && list.find((x) => x.kind === selected[0] && x.name === selected[1]);
    if (!b) return fill(detail, h("p", { class: "muted" }, "Select a budget."));
    const [, cls, text] = status(b);
    const paths = budgetPaths(b.kind, b.name);
    const chartEl = h("div", { class: "chart", testid: "burn-chart", "data-kind": b.kind, "data-name": b.name });
    const actions = paths ? h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary small", testid: `reset-${b.kind}-${b.name}`, onclick: () => reset(b, paths) }, "Reset"),
      h("button", { type: "button", class: "secondary small", testid: `topup-${b.kind}-${b.name}`, onclick: () => topUp(b, paths) }, "Top up")) : null;
    fill(detail,
      h("div", { class: "panel-head" }, h("div", {}, h("h2", {}, b.name), h("div", { class: "muted small" }, KIND_LABELS[b.kind] || b.kind, " budget ", badge(text, cls))), actions),
      h("dl", { class: "kv" },
        h("dt", {}, "Spent"), h("dd", {}, money("detail-spent", b.spent_usd)),
        h("dt", {}, "Limit"), h("dd", {}, money("detail-limit", b.limit_usd), b.topup_usd && Number(b.topup_usd) > 0 ? h("span", { class: "muted small" }, ` incl. ${fmtUsd(b.topup_usd)} top-ups`) : null),
        h("dt", {}, "Remaining"), h("dd", {}, money("detail-remaining", b.remaining_usd)),
        h("dt", {}, "Burn rate"), h("dd", {}, b.burn_usd_per_hour != null ? [money("detail-burn", b.burn_usd_per_hour), " / hour"] : h("span", { class: "muted" }, "—")),
        h("dt", {}, "Period"), h("dd", {}, time("detail-period-start", b.period_start, { short: true }), " → ", b.reset_at ? time("detail-reset", b.reset_at, { relative: true, short: true }) : "no reset (prepaid)"),
        h("dt", {}, "Runs out"), h("dd", {}, b.projected_exhaustion ? time("detail-projection", b.projected_exhaustion, { relative: true }) : h("span", { class: "muted" }, "not at the current burn rate"))),
      h("h3", { class: "chart-title" }, b.limit_usd ? "Remaining this period" : "Spent this period"),
      chartEl);
    if (!b.series || !b.series.path) {
      chartEl.append(h("p", { class: "muted" }, "No spend series for this budget."));
      return;
    }
    const my = ++seq;
    chartEl.append(loading());
    let s;
    try {
      s = await get(b.series.path);
    } catch (e) {
      if (my === seq) fill(chartEl, errorBox(e));
      return;
    }
    if (my !== seq) return;
    fill(chartEl);
    chart = burnDown(chartEl, burnData(b, s, Date.now()));
  }

  async function reset(b, paths) {
    const ok = await confirmDialog({
      title: `Reset ${b.name}?`, message: `The ${KIND_LABELS[b.kind] || b.kind} budget's spend starts over now (spent ${fmtUsd(b.spent_usd)}).`,
      yes: "Reset", danger: true,
    });
    if (!ok) return;
    await act(() => post(`${paths.base}/reset`));
  }

  async function topUp(b, paths) {
    const v = await confirmDialog({
      title: `Top up ${b.name}`, message: "Adds to this period's limit (prepaid budgets keep it until spent).",
      fields: [{ name: "amount_usd", label: "Amount (USD)", placeholder: "5.00", required: true, inputmode: "decimal" }], yes: "Top up",
    });
    if (!v) return;
    await act(() => post(`${paths.base}/top-up`, { amount_usd: v.amount_usd }));
  }

  async function act(fn) {
    try {
      await fn();
    } catch (e) {
      detail.prepend(errorBox(e));
      return;
    }
    load();
  }

  load();
  return { unmount() { seq++; if (chart) chart.destroy(); } };
}

/** The burn-down's points: what remained after each bucket, anchored on the
 * books' numbers now (the request log and the books can differ by what a
 * reset or top-up moved), and the projection to exhaustion. */
export function burnData(b, s, now) {
  const width = { minute: 60e3, hour: 3600e3, day: 86400e3 }[s.bucket] || 3600e3;
  const perBucket = new Map();
  for (const p of s.data || []) {
    const t = Date.parse(p.bucket_start);
    perBucket.set(t, (perBucket.get(t) || 0) + (Number(p.cost_usd) || 0));
  }
  const starts = [...perBucket.keys()].sort((a, b2) => a - b2);
  const total = starts.reduce((acc, t) => acc + perBucket.get(t), 0);
  const hasLimit = b.limit_usd != null && b.remaining_usd != null;
  const endValue = hasLimit ? Number(b.remaining_usd) : Number(b.spent_usd);
  // value(after cumulative c): remaining rises back by what was spent later.
  const valueAt = (c) => (hasLimit ? endValue + (total - c) : endValue - (total - c));
  const periodStart = Date.parse(b.period_start);
  const from = Number.isFinite(periodStart) ? periodStart : starts[0] ?? now;
  const points = [{ t: Math.min(from, now), remaining: valueAt(0) }];
  let c = 0;
  for (const t of starts) {
    const before = Math.max(t, from);
    if (before > points[points.length - 1].t && before < now) points.push({ t: before, remaining: valueAt(c) });
    c += perBucket.get(t);
    const end = Math.min(t + width, now);
    if (end > points[points.length - 1].t) points.push({ t: end, remaining: valueAt(c) });
  }
  if (now > points[points.length - 1].t) points.push({ t: now, remaining: endValue });
  else points[points.length - 1].remaining = endValue;
  const projection = [];
  if (hasLimit) {
    const burn = Number(b.burn_usd_per_hour) || 0;
    const reset = b.reset_at ? Date.parse(b.reset_at) : null;
    const last = points[points.length - 1];
    const out = b.projected_exhaustion ? Date.parse(b.projected_exhaustion) : null;
    if (out !== null && (!reset || out <= reset)) {
      projection.push({ t: last.t, remaining: last.remaining }, { t: Math.max(last.t + 1, out), remaining: 0 });
    } else if (burn > 0 && reset && reset > last.t) {
      // Lasts the period: the projection ends at the reset.
      projection.push({ t: last.t, remaining: last.remaining }, { t: reset, remaining: last.remaining - (burn * (reset - last.t)) / 3600e3 });
    }
  }
  // The axis runs to the period's end when it has one.
  const reset = b.reset_at ? Date.parse(b.reset_at) : null;
  const end = reset && reset > points[points.length - 1].t ? reset : null;
  return { points, projection, end, limit: hasLimit ? Number(b.limit_usd) : null, label: hasLimit ? "Remaining" : "Spent" };
}
