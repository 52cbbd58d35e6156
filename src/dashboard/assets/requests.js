// Requests: the request log, newest first, with filters, paging, a live
// tail and one request's detail.
//
// Admin API calls: 1 per page shown (GET /admin/logs?<filters>&limit=50
// [&before=<cursor>]); 1 per detail opened (GET /admin/logs/<id>); while
// the live tail is on, 1 every 2 s (the first page again, new rows merged
// in), and none while it is off or the page is left. The log may answer a
// page with fewer rows than asked and a `next` cursor (a bounded scan):
// "Older" follows it.

import { get, seg } from "./api.js";
import { h, fill, money, badge, errorBox, loading, parseHash, setHashParams, fmtTime, fmtInt } from "./ui.js";

export const PAGE_ROWS = 50;
export const TAIL_MS = 2000;
const TAIL_ROWS_MAX = 200;
const FILTERS = [
  ["key", "Key", "text", "any key"],
  ["team", "Team", "text", "any team"],
  ["model", "Model", "text", "any model"],
  ["status", "Status", "number", "e.g. 402"],
  ["tag", "Tag", "text", "key=value"],
];

const statusBadge = (s) => badge(String(s), s >= 500 ? "bad" : s >= 400 ? "warn" : "ok");

export function mount(el) {
  const { params } = parseHash();
  const filters = {};
  for (const [k] of FILTERS) filters[k] = params.get(k) || "";
  filters.from = params.get("from") || "";
  filters.to = params.get("to") || "";
  let cursors = [null]; // cursors[i]: the `before` of page i
  let page = 0;
  let next = null;
  let rows = [];
  let tail = null; // timer while the live tail is on
  let seq = 0;
  let detailSeq = 0;
  const listState = { error: null };

  const form = h("form", { class: "filters inline-form", testid: "filters", onsubmit: (e) => { e.preventDefault(); applyFilters(); } },
    FILTERS.map(([k, label, type, ph]) => h("label", { class: "field" }, h("span", {}, label),
      h("input", { name: k, type, value: filters[k], placeholder: ph, testid: `filter-${k}`, min: type === "number" ? 100 : null, max: type === "number" ? 599 : null, size: 12 }))),
    h("label", { class: "field" }, h("span", {}, "From (UTC)"), h("input", { name: "from", type: "datetime-local", testid: "filter-from", value: toInput(filters.from) })),
    h("label", { class: "field" }, h("span", {}, "To (UTC)"), h("input", { name: "to", type: "datetime-local", testid: "filter-to", value: toInput(filters.to) })),
    h("button", { type: "submit", testid: "apply-filters" }, "Apply"),
    h("button", { type: "button", class: "secondary", testid: "clear-filters", onclick: () => { form.reset(); for (const i of form.querySelectorAll("input")) i.value = ""; applyFilters(); } }, "Clear"));
  const tailBox = h("input", { type: "checkbox", testid: "live-tail", id: "live-tail", onchange: (e) => setTail(e.target.checked) });
  const detail = h("section", { class: "panel detail", hidden: true });
  const table = h("div", {});
  const pager = h("div", { class: "pager" });
  fill(el,
    h("div", { class: "page-head" }, h("h1", {}, "Requests"),
      h("label", { class: "tail", for: "live-tail" }, tailBox, " Live tail", h("span", { class: "muted small", testid: "tail-state" }, ""))),
    h("section", { class: "panel" }, form),
    detail, table, pager);

  function query(before) {
    const q = { limit: PAGE_ROWS };
    for (const [k] of FILTERS) if (filters[k]) q[k] = filters[k];
    if (filters.from) q.from = filters.from;
    if (filters.to) q.to = filters.to;
    if (before) q.before = before;
    return q;
  }

  function saveHash(rest) {
    const p = {};
    for (const [k] of FILTERS) p[k] = filters[k];
    p.from = filters.from;
    p.to = filters.to;
    setHashParams(p, rest);
  }

  function applyFilters() {
    const fd = new FormData(form);
    for (const [k] of FILTERS) filters[k] = String(fd.get(k) || "").trim();
    filters.from = fromInput(String(fd.get("from") || ""));
    filters.to = fromInput(String(fd.get("to") || ""));
    saveHash();
    cursors = [null];
    page = 0;
    loadPage();
  }

  async function loadPage() {
    const my = ++seq;
    fill(table, loading());
    fill(pager);
    try {
      const body = await get("/admin/logs", query(cursors[page]));
      if (my !== seq) return;
      rows = body.data;
      next = body.next;
      listState.error = null;
    } catch (e) {
      if (my !== seq) return;
      rows = [];
      next = null;
      listState.error = e;
    }
    render();
  }

  function render(freshIds = new Set()) {
    if (listState.error) {
      fill(table, errorBox(listState.error));
      fill(pager);
      return;
    }
    const openId = parseHash().rest[0];
    fill(table, h("div", { class: "table-wrap" }, h("table", { testid: "requests-table", "data-page": page + 1 },
      h("thead", {}, h("tr", {}, h("th", {}, "Time (UTC)"), h("th", {}, "Key"), h("th", {}, "Team"), h("th", {}, "Model"),
        h("th", {}, "Status"), h("th", { class: "r" }, "Tokens in / out"), h("th", { class: "r" }, "Cost"), h("th", {}, "Cache"), h("th", { class: "r" }, "Total"))),
      h("tbody", {}, rows.length ? rows.map((r) => h("tr", {
        testid: `request-row-${r.id}`, "data-id": r.id, tabindex: "0",
        class: `clickable${freshIds.has(r.id) ? " fresh" : ""}${r.id === openId ? " selected" : ""}`,
        onclick: () => openDetail(r.id), onkeydown: (e) => { if (e.key === "Enter") openDetail(r.id); },
      },
      h("td", { class: "num" }, h("span", { testid: "request-time", "data-value": r.time }, fmtTime(r.time))),
      h("td", {}, h("span", { testid: "request-key", "data-value": r.key }, r.key)),
      h("td", {}, r.team ?? h("span", { class: "muted" }, "—")),
      h("td", {}, h("span", { testid: "request-model", "data-value": r.model }, r.model)),
      h("td", {}, h("span", { testid: "request-status", "data-value": r.status }, statusBadge(r.status))),
      h("td", { class: "r num" }, `${fmtInt(r.prompt_tokens)} / ${fmtInt(r.completion_tokens)}`),
      h("td", { class: "r" }, money("request-cost", r.cost_usd), r.estimated ? h("span", { class: "muted small", title: "estimated" }, " est.") : null),
      h("td", {}, cacheBadge(r.cache)),
      h("td", { class: "r num" }, r.total_ms != null ? `${Number(r.total_ms).toFixed(1)} ms` : "—"))) :
        h("tr", {}, h("td", { colspan: 9, class: "empty" }, next ? "None in the stretch of the log this page looked at; Older → looks further." : "No requests match."))))));
    fill(pager,
      h("button", { type: "button", class: "secondary", testid: "prev-page", disabled: page === 0, onclick: () => { page--; loadPage(); } }, "← Newer"),
      h("span", { class: "muted small", testid: "page-number" }, `Page ${page + 1}`),
      h("button", { type: "button", class: "secondary", testid: "next-page", disabled: !next, onclick: () => { cursors[page + 1] = next; page++; setTail(false); loadPage(); } }, "Older →"));
  }

  function setTail(on) {
    tailBox.checked = on;
    if (tail) clearTimeout(tail), (tail = null);
    el.querySelector('[data-testid="tail-state"]').textContent = on ? " · every 2 s" : "";
    if (!on) return;
    if (page !== 0) {
      page = 0;
      loadPage();
    }
    const poll = async () => {
      const my = seq;
      try {
        const body = await get("/admin/logs", query(null));
        if (!tailBox.checked || my !== seq) return;
        const known = new Set(rows.map((r) => r.id));
        const fresh = body.data.filter((r) => !known.has(r.id));
        if (fresh.length) {
          rows = [...fresh, ...rows].slice(0, TAIL_ROWS_MAX);
          if (!next) next = body.next;
          render(new Set(fresh.map((r) => r.id)));
        }
      } catch {
        // Shown by the next full load; the tail keeps trying.
      }
      if (tailBox.checked && my === seq) tail = setTimeout(poll, TAIL_MS);
    };
    tail = setTimeout(poll, TAIL_MS);
  }

  function openDetail(id) {
    saveHash([id]);
    showDetail();
  }

  async function showDetail() {
    const id = parseHash().rest[0];
    for (const tr of table.querySelectorAll("tbody tr")) tr.classList.toggle("selected", tr.dataset.id === id);
    if (!id) {
      detail.hidden = true;
      fill(detail);
      return;
    }
    const my = ++detailSeq;
    detail.hidden = false;
    fill(detail, loading());
    try {
      const r = await get(`/admin/logs/${seg(id)}`);
      if (my !== detailSeq) return;
      fill(detail, detailView(r, () => { saveHash([]); showDetail(); }));
    } catch (e) {
      if (my !== detailSeq) return;
      fill(detail, h("div", { class: "panel-head" }, h("h2", {}, "Request"), closeButton(() => { saveHash([]); showDetail(); })), errorBox(e));
    }
  }

  loadPage();
  showDetail();
  return {
    unmount() {
      seq++;
      detailSeq++;
      if (tail) clearTimeout(tail);
      tailBox.checked = false;
    },
    showDetail,
  };
}

/** Called by the shell when the hash changes within this page. */
export function onHashChange(handle) {
  handle.showDetail();
}

function cacheBadge(c) {
  if (!c || c === "off" || c === "none") return h("span", { class: "muted" }, c || "—");
  return badge(c, c.includes("hit") ? "info" : "");
}

function closeButton(onclick) {
  return h("button", { type: "button", class: "secondary small", testid: "close-detail", onclick }, "Close");
}

/** One request: tokens by kind, cost, price version, timings, cache. */
export function detailView(r, onClose) {
  const field = (name, label, value, shown) => [h("dt", {}, label),
    h("dd", {}, h("span", { testid: `detail-${name}`, "data-value": value == null ? "" : typeof value === "object" ? JSON.stringify(value) : String(value) }, shown ?? (value == null || value === "" ? "—" : String(value))))];
  const tags = Object.entries(r.tags || {});
  return h("div", { testid: "request-detail", "data-id": r.id },
    h("div", { class: "panel-head" }, h("div", {}, h("h2", {}, "Request ", h("code", {}, r.id)), h("div", { class: "muted small" }, fmtTime(r.time), " UTC")), closeButton(onClose)),
    h("div", { class: "grid3" },
      h("dl", { class: "kv" },
        field("status", "Status", r.status, statusBadge(r.status)),
        field("key", "Key", r.key),
        field("team", "Team", r.team),
        field("customer", "Customer", r.customer),
        field("provider", "Provider", r.provider),
        field("model", "Model", r.model),
        field("stream", "Streamed", r.stream, r.stream ? "yes" : "no")),
      h("dl", { class: "kv" },
        field("prompt_tokens", "Prompt tokens", r.prompt_tokens, fmtInt(r.prompt_tokens)),
        field("completion_tokens", "Completion tokens", r.completion_tokens, fmtInt(r.completion_tokens)),
        field("cached_tokens", "Cached input tokens", r.cached_tokens, fmtInt(r.cached_tokens)),
        field("cache_write_tokens", "Cache write tokens", r.cache_write_tokens, fmtInt(r.cache_write_tokens)),
        field("reasoning_tokens", "Reasoning tokens", r.reasoning_tokens, fmtInt(r.reasoning_tokens))),
      h("dl", { class: "kv" },
        [h("dt", {}, "Cost"), h("dd", {}, money("detail-cost", r.cost_usd), r.estimated ? [" ", badge("estimated", "warn")] : null)],
        field("estimated", "Estimated", r.estimated, r.estimated ? "yes (tokenizer count)" : "no (provider's usage)"),
        [h("dt", {}, "Avoided"), h("dd", {}, money("detail-avoided", r.avoided_usd))],
        field("price_version", "Price version", r.price_version),
        field("cache", "Cache", r.cache, cacheBadge(r.cache)),
        field("ttfb_ms", "Time to first byte", r.ttfb_ms, r.ttfb_ms == null ? "—" : `${r.ttfb_ms} ms`),
        field("total_ms", "Total time", r.total_ms, `${r.total_ms} ms`))),
    tags.length ? h("div", { class: "tags" }, h("span", { class: "muted small" }, "Tags "), tags.map(([k, v]) => h("span", { class: "badge", testid: `detail-tag-${k}`, "data-value": v }, `${k}=${v}`))) : null);
}

function toInput(ms) {
  if (!ms) return "";
  const d = new Date(Number(ms));
  if (Number.isNaN(d.getTime())) return "";
  return d.toISOString().slice(0, 16);
}

function fromInput(s) {
  if (!s) return "";
  const t = Date.parse(s + ":00Z");
  return Number.isFinite(t) ? String(t) : "";
}


