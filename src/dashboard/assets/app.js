// The dashboard's shell: the login form, the navigation and hash routing
// (#/overview, #/budgets, #/top, #/requests, #/alerts, #/keys). Each page
// is a module exporting mount(el, ctx) -> {unmount()}; a page makes a
// bounded number of admin API calls per load (see each module's header).

import { api, token, setToken, signOut, ApiError } from "./api.js";
import { h, fill, parseHash } from "./ui.js";
import * as overview from "./overview.js";
import * as budgets from "./budgets.js";
import * as top from "./top.js";
import * as requests from "./requests.js";
import * as alerts from "./alerts.js";
import * as keys from "./keys.js";

const PAGES = [
  ["overview", "Overview", overview],
  ["budgets", "Budgets", budgets],
  ["top", "Top spenders", top],
  ["requests", "Requests", requests],
  ["alerts", "Alerts", alerts],
  ["keys", "Keys & teams", keys],
];

const loginView = document.getElementById("login");
const appView = document.getElementById("app");
const pageEl = document.getElementById("page");
const nav = document.getElementById("nav");
const loginForm = document.querySelector('[data-testid="login-form"]');
const loginError = document.querySelector('[data-testid="login-error"]');

let current = null; // {name, mod, handle}

function showLogin(message) {
  unmount();
  appView.hidden = true;
  loginView.hidden = false;
  loginError.textContent = message || "";
  const input = loginForm.elements.token;
  input.value = "";
  input.focus();
}

function showApp() {
  loginView.hidden = true;
  appView.hidden = false;
  route();
}

function unmount() {
  if (current && current.handle && current.handle.unmount) current.handle.unmount();
  current = null;
}

/** Shows the page the hash names. `oldURL`, `newURL`: a hash change's;
 * a change within a page that keeps its parameters (a request's detail
 * opened or closed) is the page's to handle, anything else mounts it anew. */
function route(oldURL, newURL) {
  if (!token()) return showLogin();
  const { page } = parseHash();
  const found = PAGES.find((p) => p[0] === page);
  if (!found) {
    location.replace("#/overview");
    return;
  }
  const [name, title, mod] = found;
  for (const a of nav.querySelectorAll("a")) {
    const on = a.dataset.page === name;
    a.classList.toggle("active", on);
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const before = oldURL ? parseHash(new URL(oldURL).hash) : null;
  const after = newURL ? parseHash(new URL(newURL).hash) : parseHash();
  const sameQuery = before && before.page === name && before.params.toString() === after.params.toString();
  if (current && current.name === name && sameQuery) {
    // Within a page (a request's detail): the page decides; the same page
    // with the same parameters (the hash set after signing in) stays.
    if (current.mod.onHashChange) current.mod.onHashChange(current.handle);
    return;
  }
  unmount();
  document.title = `${title} · bursar`;
  const el = fill(pageEl);
  el.dataset.page = name;
  current = { name, mod, handle: mod.mount(el, {}) };
}

loginForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const value = loginForm.elements.token.value.trim();
  if (!value) return;
  const button = loginForm.querySelector("button");
  button.disabled = true;
  loginError.textContent = "";
  try {
    // A cheap call that needs the token: the list of keys.
    await api("GET", "/admin/keys", { tokenOverride: value });
    setToken(value);
    loginForm.elements.token.value = "";
    // No hashchange event: showApp() mounts the page itself.
    if (!location.hash) history.replaceState(null, "", "#/overview");
    showApp();
  } catch (e) {
    loginError.textContent =
      e instanceof ApiError && e.status === 401 ? "That token was refused." :
      e instanceof ApiError && e.status === 403 ? e.message : `Could not sign in: ${e.message}`;
    loginForm.elements.token.select();
  } finally {
    button.disabled = false;
  }
});

document.getElementById("sign-out").addEventListener("click", () => signOut(""));
document.getElementById("refresh").addEventListener("click", () => {
  unmount();
  route();
});

window.addEventListener("bursar:signed-out", (ev) => showLogin(ev.detail ? `Signed out: ${ev.detail}` : ""));
window.addEventListener("hashchange", (ev) => {
  if (token()) route(ev.oldURL, ev.newURL);
});

fill(nav, PAGES.map(([name, title]) => h("a", { href: `#/${name}`, "data-page": name, testid: `nav-${name}` }, title)));

if (token()) showApp();
else showLogin();
