// The dashboard's entry point: login, the hash router (#/, #/asset/<id>, #/alerts, #/plan, #/work-orders,
// #/account, and for admins #/users and #/audit), the header.
import { accountView } from "./account.js";
import { alertsView, planView } from "./alerts.js";
import { assetView } from "./asset.js";
import { auditView } from "./audit.js";
import { api, can, h, live, saveToken, session } from "./core.js";
import { plantView } from "./plant.js";
import { usersView } from "./users.js";
import { workOrdersView } from "./workorders.js";

const view = document.getElementById("view");
let cleanup = null;
let rendering = 0;

function loginView(message = "") {
  live.stop();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("logout").hidden = true;
  const error = h("p", { class: "error", id: "login-error", role: "alert" }, message);
  const submit = async (body) => {
    error.textContent = "";
    try {
      const s = await api("/session", { method: "POST", body });
      saveToken(s.token);
      await start();
    } catch (err) {
      error.textContent = err.status === 422 ? "Fill in both fields." : err.message;
    }
  };
  const user = h("input", { name: "username", autocomplete: "username", required: true, "aria-label": "username" });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true, "aria-label": "password" });
  const key = h("input", { name: "api_key", type: "password", autocomplete: "off", required: true, placeholder: "ftk_…", "aria-label": "API key" });
  view.replaceChildren(h("div", { class: "login" },
    h("h1", {}, "Sign in"),
    h("form", { class: "card stack", id: "login-password", onsubmit: (e) => { e.preventDefault(); submit({ username: user.value, password: pass.value }); } },
      h("label", { class: "stack" }, "Username", user), h("label", { class: "stack" }, "Password", pass),
      h("button", { class: "btn", type: "submit" }, "Sign in")),
    h("form", { class: "card stack", id: "login-key", onsubmit: (e) => { e.preventDefault(); submit({ api_key: key.value }); } },
      h("label", { class: "stack" }, "Or an API key", key),
      h("button", { class: "btn secondary", type: "submit" }, "Use API key")),
    error));
}

async function start() {
  if (!session.token) return loginView();
  try {
    session.who = await api("/session");
  } catch (err) {
    saveToken("");
    return loginView(err.status === 401 ? "" : err.message);
  }
  document.getElementById("nav").hidden = false;
  for (const a of document.querySelectorAll("nav a[data-role]")) a.hidden = !can(a.dataset.role);
  const who = document.getElementById("who");
  who.hidden = false;
  who.textContent = `${session.who.name} · ${session.who.role}`;
  who.dataset.role = session.who.role;
  document.getElementById("logout").hidden = false;
  live.start();
  route();
}

async function route() {
  if (!session.who) return;
  const [path, query = ""] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean);
  const page = parts[0] || "plant";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === page);
  if (cleanup) cleanup();
  cleanup = null;
  const mine = ++rendering;
  view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    let off;
    if (page === "asset" && parts[1]) off = await assetView(view, params, decodeURIComponent(parts[1]));
    else if (page === "alerts") off = await alertsView(view, params);
    else if (page === "plan") off = await planView(view, params);
    else if (page === "work-orders") off = await workOrdersView(view, params);
    else if (page === "account") off = await accountView(view, params);
    else if (page === "users" && can("admin")) off = await usersView(view, params);
    else if (page === "audit" && can("admin")) off = await auditView(view, params);
    else off = await plantView(view, params);
    if (mine !== rendering) { if (off) off(); return; }
    cleanup = off;
    view.dataset.page = page;
  } catch (err) {
    if (mine === rendering) view.replaceChildren(h("h1", {}, "Cannot show this page"), h("p", { class: "error" }, err.message), h("a", { href: "#/" }, "Back to the plant"));
  }
}

// The badge counts the open alerts waiting for a person's acknowledgement (active or returned), shelved and
// suppressed ones aside: the number the alert list shows with "needs acknowledgement".
async function refreshAlertCount() {
  try {
    const s = await api("/alerts/summary");
    const badge = document.getElementById("alert-count");
    badge.hidden = !s.needs_ack;
    badge.textContent = s.needs_ack;
    badge.title = `${s.needs_ack} to acknowledge · ${s.active} active · ${s.open} open (${s.shelved} shelved, ${s.suppressed} suppressed)`;
    badge.setAttribute("aria-label", `${s.needs_ack} alerts to acknowledge`);
  } catch { /* the count is a convenience */ }
}

document.getElementById("logout").addEventListener("click", async () => {
  await api("/session", { method: "DELETE" }).catch(() => {});
  saveToken("");
  session.who = null;
  if (cleanup) cleanup();
  cleanup = null;
  loginView();
});
window.addEventListener("hashchange", route);
window.addEventListener("ft-alert-changed", refreshAlertCount);
window.addEventListener("ft-unauthenticated", () => { saveToken(""); session.who = null; loginView("Your session has ended: sign in again."); });
live.on((event) => { if (event === "resync") route(); });  // changes were missed: show everything afresh
live.on((event) => { if (event === "alerts" || (event === "state" && live.state === "live")) refreshAlertCount(); });
start();
