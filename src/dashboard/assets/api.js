// The admin API client. The admin token lives in this tab's sessionStorage
// (gone when the tab closes), is sent only as `Authorization: Bearer`, and
// never appears in a URL. A 401 forgets it and sends the page back to the
// login form (the app listens for "bursar:signed-out").

const TOKEN_KEY = "bursar.admin-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  window.dispatchEvent(new CustomEvent("bursar:signed-out", { detail: reason || "" }));
}

/** An admin API error: status, code and the API's message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** One call to the admin API; resolves to the parsed JSON body. `path`
 * starts with /admin/. `query` is an object of parameters (undefined, null
 * and "" are left out). */
export async function api(method, path, { query, body, tokenOverride } = {}) {
  const t = tokenOverride ?? token();
  if (!t) {
    signOut("");
    throw new ApiError(401, "signed_out", "not signed in");
  }
  let url = path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
    }
    const s = q.toString();
    if (s) url += (url.includes("?") ? "&" : "?") + s;
  }
  const headers = { authorization: `Bearer ${t}` };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, "network", `the gateway did not answer (${e.message})`);
  }
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    const err = (json && json.error) || {};
    const e = new ApiError(res.status, err.code || "http_" + res.status, err.message || `${res.status} ${res.statusText}`);
    if (res.status === 401 && !tokenOverride) signOut(e.message);
    throw e;
  }
  return json;
}

export const get = (path, query) => api("GET", path, { query });
export const post = (path, body) => api("POST", path, { body: body ?? {} });
export const patch = (path, body) => api("PATCH", path, { body });
export const del = (path) => api("DELETE", path);

/** A name as one path segment. */
export const seg = (s) => encodeURIComponent(s);

/** The admin API path of an entity kind's actions (`reset`, `top-up`) and
 * spend view, for a budget of any kind as /admin/budgets names it; null
 * where the API has no route for it. */
export function budgetPaths(kind, name) {
  const entity = { customer: "customers", team: "teams", key: "keys", provider: "providers" }[kind];
  if (entity) {
    return { base: `/admin/${entity}/${seg(name)}`, spend: `/admin/spend/${entity}/${seg(name)}` };
  }
  if (kind === "model") {
    return { base: `/admin/model_budgets/${seg(name)}`, spend: `/admin/spend/models/${seg(name)}` };
  }
  if (kind === "tag") {
    return { base: `/admin/tag_budgets/${seg(name)}`, spend: `/admin/spend/tags/${seg(name)}` };
  }
  const owner = { key_model: "keys", team_model: "teams", customer_model: "customers" }[kind];
  if (owner) {
    // Named "<owner>/<model>"; the model may itself hold "/".
    const i = name.indexOf("/");
    if (i < 0) return null;
    const o = seg(name.slice(0, i));
    const m = seg(name.slice(i + 1));
    return { base: `/admin/${owner}/${o}/models/${m}`, spend: `/admin/spend/${owner}/${o}/models/${m}` };
  }
  return null;
}
