// Small DOM helpers, formatting, the confirmation dialog and the time-range
// control the pages share. No framework: pages build their DOM with h().

/** Creates an element. `props`: `testid` (data-testid), `class`, `text`,
 * `on<event>` listeners, `value`/`checked` (properties), anything else an
 * attribute (false/null/undefined left out, true as ""). Children: nodes,
 * strings, arrays of them; null and false are skipped. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "testid") el.setAttribute("data-testid", v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "value" || k === "checked") el[k] = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Empties `el` and fills it with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// --- formatting -----------------------------------------------------------

/** A USD decimal string for display; the exact string stays in data-value. */
export function fmtUsd(s) {
  if (s === null || s === undefined || s === "") return "—";
  const n = Number(s);
  if (!Number.isFinite(n)) return String(s);
  const a = Math.abs(n);
  let opts;
  if (a === 0) return "$0.00";
  if (a >= 1) opts = { minimumFractionDigits: 2, maximumFractionDigits: 2 };
  else if (a >= 0.01) opts = { minimumFractionDigits: 2, maximumFractionDigits: 4 };
  else opts = { maximumSignificantDigits: 3 };
  return (n < 0 ? "−$" : "$") + a.toLocaleString("en-US", opts);
}

export function fmtInt(n) {
  if (n === null || n === undefined) return "—";
  return Number(n).toLocaleString("en-US");
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** A time (RFC 3339 string or unix ms) as "2026-12-07 03:41:05" UTC. */
export function fmtTime(t, { seconds = true, short = false } = {}) {
  if (t === null || t === undefined || t === "") return "—";
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  if (short) {
    const sameYear = d.getUTCFullYear() === new Date().getUTCFullYear();
    return `${sameYear ? "" : d.getUTCFullYear() + "-"}${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  }
  const s = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return seconds ? `${s}:${pad(d.getUTCSeconds())}` : s;
}

/** How far `t` is from now: "in 3 h 20 min", "5 min ago". */
export function fmtRelative(t, now = Date.now()) {
  if (t === null || t === undefined || t === "") return "";
  const ms = new Date(t).getTime() - now;
  if (Number.isNaN(ms)) return "";
  if (Math.abs(ms) < 1500) return "now";
  const a = Math.abs(ms);
  let s;
  if (a < 60e3) s = `${Math.round(a / 1e3)} s`;
  else if (a < 3600e3) s = `${Math.round(a / 60e3)} min`;
  else if (a < 48 * 3600e3) {
    const hrs = Math.floor(a / 3600e3);
    const min = Math.round((a - hrs * 3600e3) / 60e3);
    s = min ? `${hrs} h ${min} min` : `${hrs} h`;
  } else s = `${Math.round(a / 86400e3)} days`;
  return ms >= 0 ? `in ${s}` : `${s} ago`;
}

/** A money cell: formatted text, the API's exact string in data-value. */
export function money(testid, s, cls = "num") {
  return h("span", { testid, class: cls, "data-value": s ?? "", title: s != null ? `$${s}` : null }, fmtUsd(s));
}

/** A number cell with its exact value in data-value. */
export function count(testid, n, cls = "num") {
  return h("span", { testid, class: cls, "data-value": n ?? "" }, fmtInt(n));
}

/** A time cell: UTC text, the API's string in data-value. */
export function time(testid, t, { relative = false, short = false } = {}) {
  const el = h("span", { testid, "data-value": t ?? "", title: t ?? null, class: "num" }, fmtTime(t, { short }));
  if (relative && t) el.append(h("span", { class: "muted small" }, " · " + fmtRelative(t)));
  return el;
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

/** A card of one headline number. */
export function stat(label, valueEl, note) {
  return h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, valueEl), note ? h("div", { class: "stat-note muted" }, note) : null);
}

export function errorBox(e) {
  const msg = e && e.message ? e.message : String(e);
  return h("div", { class: "error", role: "alert", testid: "error" }, msg);
}

export function loading() {
  return h("div", { class: "muted loading" }, "Loading…");
}

// --- confirmation dialog -------------------------------------------------

/** Asks before an action. `fields`: [{name, label, type, value, options,
 * placeholder, required}]. Resolves to the fields' values (an object) when
 * confirmed, null when cancelled. */
export function confirmDialog({ title, message, fields = [], yes = "Confirm", danger = false }) {
  const dlg = document.querySelector('[data-testid="confirm-dialog"]');
  const body = dlg.querySelector(".dialog-body");
  const inputs = {};
  const rows = fields.map((f) => {
    let input;
    if (f.options) {
      input = h("select", { name: f.name, testid: `confirm-field-${f.name}` }, f.options.map((o) => {
        const [v, label] = Array.isArray(o) ? o : [o, o];
        return h("option", { value: v, selected: v === f.value }, label);
      }));
    } else {
      input = h("input", {
        name: f.name, type: f.type || "text", value: f.value ?? "", placeholder: f.placeholder,
        required: f.required, testid: `confirm-field-${f.name}`, inputmode: f.inputmode, autocomplete: "off",
      });
    }
    inputs[f.name] = input;
    return h("label", { class: "field" }, h("span", {}, f.label), input, f.help ? h("small", { class: "muted" }, f.help) : null);
  });
  fill(body, h("h2", { id: "confirm-title" }, title), message ? h("p", {}, message) : null, rows);
  const yesBtn = dlg.querySelector('[data-testid="confirm-yes"]');
  yesBtn.textContent = yes;
  yesBtn.classList.toggle("danger", danger);
  return new Promise((resolve) => {
    const done = () => {
      dlg.removeEventListener("close", done);
      if (dlg.returnValue !== "yes") return resolve(null);
      const values = {};
      for (const [k, el] of Object.entries(inputs)) values[k] = el.value.trim();
      resolve(values);
    };
    dlg.addEventListener("close", done);
    dlg.returnValue = "";
    for (const f of fields) if (inputs[f.name] && f.value !== undefined) inputs[f.name].value = f.value;
    dlg.showModal();
    (fields.length ? inputs[fields[0].name] : yesBtn).focus();
  });
}

// --- time ranges ----------------------------------------------------------

export const PRESETS = [
  ["1h", "1 hour", 3600e3],
  ["6h", "6 hours", 6 * 3600e3],
  ["24h", "24 hours", 24 * 3600e3],
  ["7d", "7 days", 7 * 86400e3],
  ["30d", "30 days", 30 * 86400e3],
];

export const BUCKET_MS = { minute: 60e3, hour: 3600e3, day: 86400e3 };
/** The most buckets a chart asks for (the API allows far more; a chart
 * of more bars than pixels shows nothing more). */
export const CHART_BUCKETS_MAX = 1500;

/** The range a page's hash parameters name: `range=<preset>` (relative to
 * now) or `from=`/`to=` (unix ms). */
export function rangeFromParams(params, fallback = "24h") {
  const from = Number(params.get("from"));
  const to = Number(params.get("to"));
  if (params.get("from") && params.get("to") && from < to) return { preset: "", from, to };
  const preset = PRESETS.some((p) => p[0] === params.get("range")) ? params.get("range") : fallback;
  return { preset };
}

/** `{from, to}` in unix ms for a range state; a preset ends now. */
export function resolveRange(r, now = Date.now()) {
  if (!r.preset) return { from: r.from, to: r.to };
  const span = PRESETS.find((p) => p[0] === r.preset)[2];
  const to = now + 1; // [from, to): now included
  return { from: to - span, to };
}

/** The finest bucket that keeps a range within CHART_BUCKETS_MAX buckets. */
export function bucketFor(from, to, wanted) {
  const order = ["minute", "hour", "day"];
  let i = Math.max(0, order.indexOf(wanted));
  while (i < order.length - 1 && (to - from) / BUCKET_MS[order[i]] > CHART_BUCKETS_MAX) i++;
  return order[i];
}

export function rangeParams(r) {
  return r.preset ? { range: r.preset } : { from: r.from, to: r.to };
}

const toInput = (ms) => {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}T${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
};
const fromInput = (s) => (s ? Date.parse(s + ":00Z") : NaN);

/** Preset buttons and from/to inputs (UTC). Calls `onChange(rangeState)`. */
export function rangeControls(state, onChange) {
  const { from, to } = resolveRange(state);
  const fromEl = h("input", { type: "datetime-local", testid: "range-from", id: "range-from", value: toInput(from), "data-value": from });
  const toEl = h("input", { type: "datetime-local", testid: "range-to", id: "range-to", value: toInput(to), "data-value": to });
  const apply = () => {
    const f = fromInput(fromEl.value);
    const t = fromInput(toEl.value);
    if (Number.isFinite(f) && Number.isFinite(t) && f < t) onChange({ preset: "", from: f, to: t });
    else toEl.setCustomValidity("From must be before to"), toEl.reportValidity();
  };
  fromEl.addEventListener("change", () => toEl.setCustomValidity(""));
  toEl.addEventListener("change", () => toEl.setCustomValidity(""));
  const presets = h("div", { class: "segmented", role: "group", "aria-label": "Time range" },
    PRESETS.map(([id, label]) => h("button", {
      type: "button", class: state.preset === id ? "on" : "", testid: `range-${id}`,
      "aria-pressed": state.preset === id ? "true" : "false", title: `Last ${label}`,
      onclick: () => onChange({ preset: id }),
    }, id)));
  return h("div", { class: "range" }, presets,
    h("label", { class: "inline", for: "range-from" }, "From"), fromEl,
    h("label", { class: "inline", for: "range-to" }, "to"), toEl,
    h("span", { class: "muted small" }, "UTC"),
    h("button", { type: "button", class: "secondary", testid: "range-apply", onclick: apply }, "Apply"));
}

// --- hash routing parameters ----------------------------------------------

/** The current hash's page and parameters: `#/page/rest?k=v`. */
export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "overview", rest: parts.slice(1), params: new URLSearchParams(query) };
}

/** Rewrites the hash's parameters without a navigation (no reload of the
 * page); `rest` keeps or replaces the path after the page. */
export function setHashParams(params, rest) {
  const cur = parseHash();
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const r = (rest ?? cur.rest).map(encodeURIComponent).join("/");
  const s = q.toString();
  history.replaceState(null, "", `#/${cur.page}${r ? "/" + r : ""}${s ? "?" + s : ""}`);
}
