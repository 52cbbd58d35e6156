// Top spenders in a range by key, team, customer, model and tag.
//
// Admin API calls per load (and per change of range): 5, in parallel, one
// per dimension:
//   GET /admin/spend/totals?group_by=<g>&order=cost&limit=10&from&to

import { get } from "./api.js";
import {
  h, fill, money, count, errorBox, loading, rangeControls, rangeFromParams, resolveRange, rangeParams,
  parseHash, setHashParams,
} from "./ui.js";

export const TOP_N = 10;
// [testid group, group_by, title]
export const DIMENSIONS = [
  ["key", "key", "Keys"],
  ["team", "team", "Teams"],
  ["customer", "customer", "Customers"],
  ["model", "model", "Models"],
  ["tag", "tags", "Tags"],
];

export function mount(el) {
  const state = { range: rangeFromParams(parseHash().params, "24h") };
  let seq = 0;
  const head = h("div", { class: "page-head" });
  const grid = h("div", { class: "grid-top" });
  fill(el, head, grid);

  async function load() {
    const my = ++seq;
    const { from, to } = resolveRange(state.range);
    setHashParams(rangeParams(state.range));
    fill(head, h("h1", {}, "Top spenders"),
      h("div", { class: "toolbar" }, rangeControls(state.range, (r) => { state.range = r; load(); })));
    grid.setAttribute("data-from", from);
    grid.setAttribute("data-to", to);
    const panels = DIMENSIONS.map(([id, , title]) => h("section", { class: "panel", testid: `top-${id}` }, h("h2", {}, title), loading()));
    fill(grid, panels);
    const results = await Promise.allSettled(DIMENSIONS.map(([, groupBy]) =>
      get("/admin/spend/totals", { group_by: groupBy, order: "cost", limit: TOP_N, from, to })));
    if (my !== seq) return;
    results.forEach((r, i) => {
      const [id, , title] = DIMENSIONS[i];
      if (r.status === "rejected") return fill(panels[i], h("h2", {}, title), errorBox(r.reason));
      const rows = r.value.data;
      const max = Math.max(...rows.map((x) => Number(x.cost_usd) || 0), 0);
      fill(panels[i], h("h2", {}, title), h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, title.replace(/s$/, "")), h("th", { class: "r" }, "Spend"), h("th", { class: "r" }, "Requests"), h("th", { class: "share" }, ""))),
        h("tbody", {}, rows.length ? rows.map((x, rank) => {
          const name = x.group === "" || x.group == null ? "" : x.group;
          const bar = h("div", { class: "bar" }, h("span", {}));
          bar.firstChild.style.width = `${max > 0 ? ((100 * (Number(x.cost_usd) || 0)) / max).toFixed(1) : 0}%`;
          return h("tr", { testid: `top-${id}-${name}`, "data-rank": rank + 1 },
            h("td", { title: name }, name === "" ? h("span", { class: "muted" }, "(none)") : name),
            h("td", { class: "r" }, money("top-cost", x.cost_usd)),
            h("td", { class: "r" }, count("top-requests", x.requests)),
            h("td", { class: "share" }, bar));
        }) : h("tr", {}, h("td", { colspan: 4, class: "empty" }, "Nothing in this range.")))));
    });
  }

  load();
  return { unmount() { seq++; } };
}
