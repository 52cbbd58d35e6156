// Keys and teams (and customers): create, edit budgets, reset, top up and
// delete, each action behind the confirmation dialog.
//
// Admin API calls per load: 4, in parallel:
//   GET /admin/keys, GET /admin/teams, GET /admin/customers (definitions)
//   GET /admin/budgets (their spend: one call for all of them)
// An action: 1 (POST / PATCH / DELETE), then the load again.

import { get, post, patch, del, seg } from "./api.js";
import { h, fill, money, badge, errorBox, loading, confirmDialog, fmtUsd } from "./ui.js";
import { usageBar } from "./budgets.js";

// [kind (testids, /admin/budgets), collection (URL), title]
const SECTIONS = [
  ["key", "keys", "Virtual keys"],
  ["team", "teams", "Teams"],
  ["customer", "customers", "Customers"],
];
const RESETS = [["1h", "hourly (1h)"], ["1d", "daily (1d)"], ["1w", "weekly (1w)"], ["1M", "monthly (1M)"], ["", "never (prepaid)"]];

export function mount(el) {
  let seq = 0;
  let data = { key: [], team: [], customer: [] };
  let spend = new Map(); // "kind/name" -> spend view
  let spendError = null;
  const secretBox = h("div", {});
  const panels = Object.fromEntries(SECTIONS.map(([kind]) => [kind, h("section", { class: "panel", testid: `${kind}s-panel` })]));
  fill(el, h("div", { class: "page-head" }, h("h1", {}, "Keys & teams")), secretBox, panels.key, panels.team, panels.customer);

  async function load() {
    const my = ++seq;
    for (const p of Object.values(panels)) fill(p, loading());
    const results = await Promise.allSettled([get("/admin/keys"), get("/admin/teams"), get("/admin/customers"), get("/admin/budgets")]);
    if (my !== seq) return;
    const [k, t, c, b] = results;
    spend = new Map();
    spendError = b.status === "rejected" ? b.reason : null;
    if (b.status === "fulfilled") for (const x of b.value.data || []) spend.set(`${x.kind}/${x.name}`, x);
    SECTIONS.forEach(([kind], i) => {
      const r = [k, t, c][i];
      if (r.status === "rejected") return fill(panels[kind], errorBox(r.reason));
      data[kind] = r.value.data || [];
    });
    SECTIONS.forEach(([kind, coll, title], i) => {
      if ([k, t, c][i].status === "fulfilled") renderSection(kind, coll, title);
    });
  }

  function renderSection(kind, coll, title) {
    const rows = data[kind];
    fill(panels[kind],
      h("div", { class: "panel-head" }, h("h2", {}, title), h("span", { class: "muted small" }, `${rows.length}`)),
      createForm(kind, coll),
      spendError ? h("p", { class: "muted small" }, `Spend unavailable: ${spendError.message}`) : null,
      h("div", { class: "table-wrap" }, h("table", { testid: `${kind}s-table` },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), kind !== "customer" ? h("th", {}, kind === "key" ? "Team / customer" : "Customer") : null,
          h("th", {}, "Budget"), h("th", { class: "r" }, "Spent"), h("th", { class: "r" }, "Remaining"), h("th", {}))),
        h("tbody", {}, rows.length ? rows.map((d) => row(kind, coll, d)) :
          h("tr", {}, h("td", { colspan: 6, class: "empty" }, `No ${title.toLowerCase()} yet.`))))));
  }

  function row(kind, coll, d) {
    const s = spend.get(`${kind}/${d.name}`);
    const b = d.budget;
    const budgetText = b ? [h("span", { class: "num" }, fmtUsd(b.limit_usd)), h("span", { class: "muted small" }, ` ${b.reset ? "per " + b.reset : "prepaid"} · ${b.mode || "strict"}`)] : h("span", { class: "muted" }, "none");
    const owner = kind === "key" ? (d.team ? `team ${d.team}` : d.customer ? `customer ${d.customer}` : "—") : kind === "team" ? (d.customer || "—") : null;
    return h("tr", { testid: `${kind}-row-${d.name}`, "data-source": d.source },
      h("td", {}, h("strong", {}, d.name), " ", d.source === "api" ? badge("api", "info") : badge("file")),
      owner !== null ? h("td", {}, owner) : null,
      h("td", { testid: "entity-budget", "data-value": b ? b.limit_usd : "" }, budgetText),
      h("td", { class: "r" }, s ? money("entity-spent", s.spent_usd) : h("span", { class: "muted" }, "—")),
      h("td", { class: "r" }, s ? [money("entity-remaining", s.remaining_usd), usageBar(s)] : h("span", { class: "muted" }, "—")),
      h("td", {}, h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary small", testid: `edit-budget-${kind}-${d.name}`, onclick: () => editBudget(kind, coll, d) }, "Budget…"),
        b ? h("button", { type: "button", class: "secondary small", testid: `reset-${kind}-${d.name}`, onclick: () => reset(kind, coll, d, s) }, "Reset") : null,
        b ? h("button", { type: "button", class: "secondary small", testid: `topup-${kind}-${d.name}`, onclick: () => topUp(kind, coll, d) }, "Top up") : null,
        d.source === "api" ? h("button", { type: "button", class: "secondary small", testid: `delete-${kind}-${d.name}`, onclick: () => remove(kind, coll, d) }, "Delete") : null)));
  }

  function createForm(kind, coll) {
    const teams = data.team.map((t) => t.name);
    const customers = data.customer.map((c) => c.name);
    const form = h("form", { class: "inline-form create", testid: `create-${kind}-form`, onsubmit: (e) => { e.preventDefault(); create(kind, coll, form); } },
      h("label", { class: "field" }, h("span", {}, "Name"), h("input", { name: "name", required: true, placeholder: `new ${kind} name`, autocomplete: "off", pattern: "[^\\s\\/]+", title: "no spaces or slashes" })),
      kind === "key" ? h("label", { class: "field" }, h("span", {}, "Team"), h("select", { name: "team" }, h("option", { value: "" }, "(none)"), teams.map((t) => h("option", { value: t }, t)))) : null,
      kind !== "customer" ? h("label", { class: "field" }, h("span", {}, kind === "key" ? "or customer" : "Customer"), h("select", { name: "customer" }, h("option", { value: "" }, "(none)"), customers.map((c) => h("option", { value: c }, c)))) : null,
      h("label", { class: "field" }, h("span", {}, "Budget (USD)"), h("input", { name: "limit_usd", placeholder: "none", inputmode: "decimal", size: 8 })),
      h("label", { class: "field" }, h("span", {}, "Resets"), h("select", { name: "reset" }, RESETS.map(([v, l]) => h("option", { value: v, selected: v === "1M" }, l)))),
      h("label", { class: "field" }, h("span", {}, "Mode"), h("select", { name: "mode" }, h("option", { value: "strict" }, "strict"), h("option", { value: "soft" }, "soft"))),
      h("button", { type: "submit", testid: `create-${kind}` }, `Create ${kind}`));
    return form;
  }

  async function create(kind, coll, form) {
    const f = new FormData(form);
    const body = { name: String(f.get("name")).trim() };
    if (f.get("team")) body.team = f.get("team");
    else if (f.get("customer")) body.customer = f.get("customer");
    const limit = String(f.get("limit_usd") || "").trim();
    if (limit) {
      body.budget = { limit_usd: limit, mode: f.get("mode") };
      if (f.get("reset")) body.budget.reset = f.get("reset");
    }
    const ok = await confirmDialog({
      title: `Create ${kind} ${body.name}?`,
      message: limit ? `With a ${body.budget.mode} budget of ${fmtUsd(limit)} ${body.budget.reset ? "per " + body.budget.reset : "(prepaid)"}.` : "Without a budget of its own.",
      yes: "Create",
    });
    if (!ok) return;
    let made;
    try {
      made = await post(`/admin/${coll}`, body);
    } catch (e) {
      panels[kind].prepend(errorBox(e));
      return;
    }
    if (kind === "key" && made.key) showSecret(made.name, made.key);
    load();
  }

  function showSecret(name, secret) {
    const code = h("code", { testid: "new-key-secret", "data-value": secret, "data-name": name }, secret);
    const copy = h("button", { type: "button", class: "secondary small", testid: "copy-secret", onclick: async () => {
      try { await navigator.clipboard.writeText(secret); copy.textContent = "Copied"; } catch { copy.textContent = "Select and copy"; }
    } }, "Copy");
    fill(secretBox, h("div", { class: "note", role: "status" },
      h("div", {}, h("strong", {}, `Key ${name} created.`), " Its secret is shown this once; the gateway keeps only its SHA-256."),
      h("div", { class: "secret" }, code, copy,
        h("button", { type: "button", class: "secondary small", testid: "dismiss-secret", onclick: () => fill(secretBox) }, "Done"))));
  }

  async function editBudget(kind, coll, d) {
    const b = d.budget || {};
    const v = await confirmDialog({
      title: `Budget of ${kind} ${d.name}`,
      message: "Leave the limit empty to remove the budget.",
      fields: [
        { name: "limit_usd", label: "Limit (USD)", value: b.limit_usd || "", inputmode: "decimal", placeholder: "none" },
        { name: "reset", label: "Resets", value: d.budget ? (b.reset || "") : "1M", options: RESETS },
        { name: "mode", label: "Mode", value: b.mode || "strict", options: ["strict", "soft"] },
      ],
      yes: "Save",
    });
    if (!v) return;
    let budget = null;
    if (v.limit_usd) {
      budget = { ...b, limit_usd: v.limit_usd, mode: v.mode };
      if (v.reset) budget.reset = v.reset;
      else delete budget.reset;
    }
    await act(kind, () => patch(`/admin/${coll}/${seg(d.name)}`, { budget }));
  }

  async function reset(kind, coll, d, s) {
    const ok = await confirmDialog({
      title: `Reset ${kind} ${d.name}?`,
      message: `Its budget's spend starts over now${s ? ` (spent ${fmtUsd(s.spent_usd)})` : ""}.`, yes: "Reset", danger: true,
    });
    if (ok) await act(kind, () => post(`/admin/${coll}/${seg(d.name)}/reset`));
  }

  async function topUp(kind, coll, d) {
    const v = await confirmDialog({
      title: `Top up ${kind} ${d.name}`, message: "Adds to the budget's limit for this period (a prepaid budget keeps it until spent).",
      fields: [{ name: "amount_usd", label: "Amount (USD)", placeholder: "5.00", required: true, inputmode: "decimal" }], yes: "Top up",
    });
    if (v) await act(kind, () => post(`/admin/${coll}/${seg(d.name)}/top-up`, { amount_usd: v.amount_usd }));
  }

  async function remove(kind, coll, d) {
    const ok = await confirmDialog({ title: `Delete ${kind} ${d.name}?`, message: kind === "key" ? "Requests with its secret are refused from now on." : "Its spend history stays in the request log.", yes: "Delete", danger: true });
    if (ok) await act(kind, () => del(`/admin/${coll}/${seg(d.name)}`));
  }

  async function act(kind, fn) {
    try {
      await fn();
    } catch (e) {
      panels[kind].prepend(errorBox(e));
      return;
    }
    load();
  }

  load();
  return { unmount() { seq++; } };
}
