// Alerts: what is firing now, the history with each delivery's state, the
// channels (with a test-send button) and the rules.
//
// Admin API calls per load: 4, in parallel:
//   GET /admin/alerts/history?limit=50, GET /admin/alerts/state,
//   GET /admin/alerts/channels, GET /admin/alerts/rules
// A test send: 1 (POST /admin/alerts/channels/<name>/test); a replay: 1,
// then the load again.

import { get, post, seg } from "./api.js";
import { h, fill, money, badge, errorBox, loading, confirmDialog, fmtTime, fmtRelative, fmtInt } from "./ui.js";
import { KIND_LABELS } from "./budgets.js";

export const HISTORY_ROWS = 50;

const deliveryBadge = (state) => badge(state, { delivered: "ok", pending: "warn", dead: "bad" }[state] || "");

function typeBadge(type) {
  const cls = type.includes("exhausted") ? "bad" : type.includes("recovered") ? "ok" : type.startsWith("operational") ? "info" : "warn";
  return badge(type, cls);
}

export function mount(el) {
  let seq = 0;
  const statePanel = h("section", { class: "panel" });
  const historyPanel = h("section", { class: "panel" });
  const channelsPanel = h("section", { class: "panel" });
  const rulesPanel = h("section", { class: "panel" });
  fill(el, h("div", { class: "page-head" }, h("h1", {}, "Alerts")),
    h("div", { class: "split" }, h("div", {}, historyPanel), h("div", {}, channelsPanel, statePanel, rulesPanel)));

  async function load() {
    const my = ++seq;
    for (const p of [statePanel, historyPanel, channelsPanel, rulesPanel]) fill(p, loading());
    const [history, state, channels, rules] = await Promise.allSettled([
      get("/admin/alerts/history", { limit: HISTORY_ROWS }),
      get("/admin/alerts/state"),
      get("/admin/alerts/channels"),
      get("/admin/alerts/rules"),
    ]);
    if (my !== seq) return;
    renderHistory(history);
    renderState(state);
    renderChannels(channels);
    renderRules(rules);
  }

  function renderHistory(r) {
    if (r.status === "rejected") return fill(historyPanel, h("h2", {}, "History"), errorBox(r.reason));
    const rows = r.value.data || [];
    fill(historyPanel, h("div", { class: "panel-head" }, h("h2", {}, "History"), h("span", { class: "muted small" }, `newest first, up to ${HISTORY_ROWS}`)),
      h("table", { testid: "alerts-history" },
        h("thead", {}, h("tr", {}, h("th", {}, "Time (UTC)"), h("th", {}, "Alert"), h("th", {}, "Deliveries"), h("th", {}))),
        h("tbody", {}, rows.length ? rows.map((a) => h("tr", { testid: `alert-row-${a.id}`, "data-type": a.type, "data-id": a.id },
          h("td", { class: "num" }, h("span", { title: a.id }, fmtTime(a.timestamp_ms)), h("div", { class: "muted small" }, fmtRelative(a.timestamp_ms))),
          h("td", {}, typeBadge(a.type), h("div", { class: "summary", testid: "alert-summary" }, a.summary)),
          h("td", {}, (a.routes || []).map((rt) => h("div", { class: "route", testid: `alert-route-${rt.channel}`, "data-value": rt.state },
            h("span", {}, rt.channel), " ", deliveryBadge(rt.state),
            h("span", { class: "muted small" }, ` ${rt.attempts} attempt${rt.attempts === 1 ? "" : "s"}${rt.last_status ? ` · HTTP ${rt.last_status}` : ""}`),
            rt.last_error ? h("div", { class: "muted small" }, rt.last_error) : null))),
          h("td", {}, h("button", { type: "button", class: "secondary small", testid: `replay-${a.id}`, onclick: () => replay(a) }, "Replay")))) :
          h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No alerts yet.")))));
  }

  function renderState(r) {
    if (r.status === "rejected") return fill(statePanel, h("h2", {}, "Now"), errorBox(r.reason));
    const entities = (r.value.entities || []).slice().sort((a, b) => (b.firing.length > 0) - (a.firing.length > 0));
    const d = r.value.delivery;
    const firing = entities.filter((e) => e.firing.length);
    fill(statePanel, h("div", { class: "panel-head" }, h("h2", {}, "Now"),
      d ? h("span", { class: "muted small", testid: "delivery-state", "data-pending": d.pending, "data-dead": d.dead_lettered },
        `${fmtInt(d.pending)} pending · ${fmtInt(d.dead_lettered)} dead-lettered`) : null),
      h("table", { testid: "alerts-state" },
        h("thead", {}, h("tr", {}, h("th", {}, "Watched"), h("th", { class: "r" }, "Spent / limit"), h("th", {}, "Firing"))),
        h("tbody", {}, entities.length ? entities.map((e) => h("tr", { testid: `alert-state-${e.entity.kind}-${e.entity.name}`, "data-firing": e.firing.join(",") },
          h("td", { class: "nowrap" }, h("strong", {}, e.entity.name), h("div", { class: "muted small" }, KIND_LABELS[e.entity.kind] || e.entity.kind, e.rules.length ? ` · ${e.rules.join(", ")}` : "")),
          h("td", { class: "r nowrap" }, money("state-spent", e.spent_usd), h("span", { class: "muted" }, " / "), money("state-limit", e.limit_usd)),
          h("td", {}, e.firing.length ? e.firing.map((f) => badge(f, f === "exhausted" ? "bad" : "warn")) : h("span", { class: "muted small" }, "quiet")))) :
          h("tr", {}, h("td", { colspan: 3, class: "empty" }, "No alert rule covers a budget.")))),
      h("p", { class: "muted small" }, `${firing.length} of ${entities.length} watched budgets have alerts standing this period.`));
  }

  function renderChannels(r) {
    if (r.status === "rejected") return fill(channelsPanel, h("h2", {}, "Channels"), errorBox(r.reason));
    const rows = r.value.data || [];
    fill(channelsPanel, h("h2", {}, "Channels"),
      h("table", { testid: "alerts-channels" },
        h("thead", {}, h("tr", {}, h("th", {}, "Channel"), h("th", {}, "Destination"), h("th", {}))),
        h("tbody", {}, rows.length ? rows.map((c) => {
          const result = h("div", { class: "small", testid: `test-result-${c.name}`, "aria-live": "polite" });
          return h("tr", { testid: `channel-${c.name}`, "data-kind": c.kind },
            h("td", {}, h("strong", {}, c.name), h("div", { class: "muted small" }, c.kind, c.source ? ` · ${c.source}` : "")),
            h("td", { class: "dest" }, h("code", {}, c.url || (c.to ? c.to.join(", ") : c.smtp_host || "—")), result),
            h("td", { class: "r" }, h("button", { type: "button", class: "secondary small", testid: `test-send-${c.name}`, onclick: (e) => testSend(c, e.target, result) }, "Send test")));
        }) : h("tr", {}, h("td", { colspan: 3, class: "empty" }, "No channels are configured.")))));
  }

  function renderRules(r) {
    if (r.status === "rejected") return fill(rulesPanel, h("h2", {}, "Rules"), errorBox(r.reason));
    const rows = r.value.data || [];
    const scope = (s) => (typeof s === "string" ? s : JSON.stringify(s));
    fill(rulesPanel, h("h2", {}, "Rules"),
      h("table", { testid: "alerts-rules" },
        h("thead", {}, h("tr", {}, h("th", {}, "Rule"), h("th", {}, "Scope"), h("th", {}, "Fires at"), h("th", {}, "Channels"))),
        h("tbody", {}, rows.length ? rows.map((x) => h("tr", { testid: `rule-${x.name}` },
          h("td", {}, x.name), h("td", {}, h("code", {}, scope(x.scope))),
          h("td", {}, [...(x.thresholds || []).map((t) => `${t}%`), x.exhausted ? "exhausted" : null, x.forecast ? "forecast" : null].filter(Boolean).join(", ")),
          h("td", {}, (x.channels || []).join(", ")))) :
          h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No rules.")))));
  }

  async function testSend(c, button, result) {
    button.disabled = true;
    fill(result, h("span", { class: "muted" }, "Sending…"));
    result.removeAttribute("data-value");
    try {
      const t = await post(`/admin/alerts/channels/${seg(c.name)}/test`);
      result.setAttribute("data-value", t.outcome);
      result.setAttribute("data-alert-id", t.alert_id);
      fill(result, badge(t.delivered ? "delivered" : t.outcome, t.delivered ? "ok" : "bad"),
        h("span", { class: "muted" }, ` ${t.status ? `HTTP ${t.status} · ` : ""}${t.latency_ms} ms${t.error ? ` · ${t.error}` : ""}`));
    } catch (e) {
      result.setAttribute("data-value", "error");
      fill(result, errorBox(e));
    } finally {
      button.disabled = false;
    }
  }

  async function replay(a) {
    const ok = await confirmDialog({ title: "Send this alert again?", message: `${a.type}: ${a.summary}. It is queued again on every channel it went to, with the same id.`, yes: "Replay" });
    if (!ok) return;
    try {
      await post(`/admin/alerts/${seg(a.id)}/replay`);
    } catch (e) {
      historyPanel.prepend(errorBox(e));
      return;
    }
    load();
  }

  load();
  return { unmount() { seq++; } };
}
