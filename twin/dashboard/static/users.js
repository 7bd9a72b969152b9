// People and keys, for admins (#/users): create users, change their role, disable or enable them, reset a
// password, limit them to chosen sites, see and end their sessions; create keys (for chosen sites) (with an expiry), rotate and revoke them. The last admin
// cannot be taken away: the platform answers 409 and the page says why.
import { api, ApiError, fmtTime, h, toast, trackDirty } from "./core.js";

const ROLES = ["viewer", "technician", "engineer", "admin"];
const KEY_ROLES = ["agent", ...ROLES];

const roleSelect = (name, value, roles = ROLES) =>
  h("select", { name, "aria-label": name }, roles.map((r) => h("option", { value: r, selected: r === value }, r)));

// A site scope: "All sites", or one checkbox per site of the platform. value() is null for every site.
function sitesPicker(sites, chosen, name) {
  const all = h("input", { type: "checkbox", name: `${name}-all`, checked: !chosen });
  const boxes = sites.map((s) => h("input", { type: "checkbox", name, value: s.id, checked: !!chosen && chosen.includes(s.id), disabled: !chosen }));
  all.addEventListener("change", () => boxes.forEach((b) => { b.disabled = all.checked; }));
  const el = h("fieldset", { class: "sites", "data-field": name }, h("legend", {}, "Sites"),
    h("label", {}, all, "All sites"), ...sites.map((s, i) => h("label", {}, boxes[i], s.name || s.id)));
  return { el, value: () => (all.checked ? null : boxes.filter((b) => b.checked).map((b) => b.value)) };
}

const siteNames = (ids, sites) => (ids ? ids.map((id) => (sites.find((s) => s.id === id) || {}).name || id).join(", ") : "All sites");

function explain(err) {
  if (err instanceof ApiError && err.status === 409) return err.message;
  if (err instanceof ApiError && err.status === 422) return `Not accepted: ${err.message}`;
  return err.message;
}

// A key shown once, with a button to copy it: it cannot be shown again.
function revealKey(box, key, what) {
  const field = h("input", { value: key, readonly: true, class: "key-once", "aria-label": "new key", onfocus: (e) => e.target.select() });
  box.replaceChildren(h("div", { class: "card reveal", role: "status" },
    h("strong", {}, `${what}: copy it now, it is shown this once`),
    h("div", { class: "row" }, field,
      h("button", { class: "btn small", type: "button", onclick: async () => {
        try { await navigator.clipboard.writeText(key); toast("Key copied"); } catch { field.select(); }
      } }, "Copy"),
      h("button", { class: "btn small secondary", type: "button", onclick: () => box.replaceChildren() }, "Done"))));
  field.focus();
}

function userRow(u, reload, msg, sites) {
  const act = async (fn, done) => {  // a refused change (409: the last admin) is shown, and the row redrawn as it is
    msg.textContent = "";
    try { await fn(); toast(done); } catch (err) { msg.textContent = `${u.username}: ${explain(err)}`; }
    await reload().catch(() => {});
  };
  const role = roleSelect("role", u.role);
  role.addEventListener("change", () => act(() => api(`/users/${encodeURIComponent(u.username)}`, { method: "PATCH", body: { role: role.value } }), `${u.username} is now ${role.value}`));
  const sessions = h("ul", { class: "timeline" });
  const details = h("details", { class: "history", ontoggle: async () => {
    if (!details.open) return;
    const list = await api(`/users/${encodeURIComponent(u.username)}/sessions`).catch((err) => { msg.textContent = err.message; return []; });
    sessions.replaceChildren(...(list.length ? list.map((s) => h("li", {}, `${s.prefix} · since ${fmtTime(s.created_at)} · used ${fmtTime(s.last_used_at)} `,
      h("button", { class: "btn small secondary", type: "button", onclick: () => act(() => api(`/users/${encodeURIComponent(u.username)}/sessions/${s.prefix}`, { method: "DELETE" }), `Session ${s.prefix} ended`) }, "End")))
      : [h("li", { class: "muted" }, "no live session")]));
  } }, h("summary", {}, `Sessions (${u.sessions})`), sessions);
  const picker = sitesPicker(sites, u.sites, "user-sites");
  const scope = h("details", { class: "history", "data-field": "sites" }, h("summary", {}, siteNames(u.sites, sites)),
    h("form", { class: "stack", onsubmit: (e) => {
      e.preventDefault();
      const chosen = picker.value();
      act(() => api(`/users/${encodeURIComponent(u.username)}`, { method: "PATCH", body: { sites: chosen } }),
        chosen ? `${u.username} now sees ${siteNames(chosen, sites)} only` : `${u.username} now sees every site`);
    } }, picker.el, h("button", { class: "btn small secondary", type: "submit" }, "Save sites")));
  const password = h("input", { type: "password", name: "password", minlength: "8", maxlength: "1024", autocomplete: "new-password", placeholder: "new password", "aria-label": `new password for ${u.username}` });
  const reset = trackDirty(h("form", { class: "row", "data-form": "reset-password", onsubmit: (e) => {
    e.preventDefault();
    act(() => api(`/users/${encodeURIComponent(u.username)}/password`, { method: "POST", body: { password: password.value } }), `Password of ${u.username} reset; their sessions ended`);
  } }, password, h("button", { class: "btn small secondary", type: "submit" }, "Reset password")));
  return h("tr", { "data-user": u.username, class: u.disabled ? "stale" : "" },
    h("td", { "data-label": "User" }, h("strong", {}, u.username), u.disabled ? h("span", { class: "badge bad" }, " disabled") : null),
    h("td", { "data-label": "Role" }, role),
    h("td", { "data-label": "Sites" }, scope),
    h("td", { "data-label": "Since" }, fmtTime(u.created_at)),
    h("td", { "data-label": "Sessions" }, details),
    h("td", { "data-label": "Actions" }, h("div", { class: "stack" },
      h("div", { class: "row" },
        h("button", { class: `btn small ${u.disabled ? "" : "danger"}`, type: "button", "data-action": u.disabled ? "enable" : "disable",
          onclick: () => act(() => api(`/users/${encodeURIComponent(u.username)}`, { method: "PATCH", body: { disabled: !u.disabled } }),
            u.disabled ? `${u.username} enabled` : `${u.username} disabled; their sessions ended`) }, u.disabled ? "Enable" : "Disable"),
        h("button", { class: "btn small secondary", type: "button", "data-action": "remove", onclick: () => {
          if (confirm(`Remove ${u.username}? Their sessions and keys are revoked.`)) act(() => api(`/users/${encodeURIComponent(u.username)}`, { method: "DELETE" }), `${u.username} removed`);
        } }, "Remove")),
      reset)));
}

function keyRow(k, reload, msg, reveal, sites) {
  const act = async (fn, done) => {
    msg.textContent = "";
    try { const r = await fn(); if (done) toast(done); await reload(); return r; } catch (err) { msg.textContent = `${k.prefix}: ${explain(err)}`; return null; }
  };
  const live = k.state === "active";
  return h("tr", { "data-key": k.prefix, class: live ? "" : "stale" },
    h("td", { "data-label": "Key" }, h("code", {}, k.prefix), " ", k.name),
    h("td", { "data-label": "Role" }, k.role),
    h("td", { "data-label": "Sites" }, siteNames(k.sites, sites)),
    h("td", { "data-label": "State" }, h("span", { class: `badge ${live ? "ok" : "unknown"}` }, k.state), k.rotated_to ? h("div", { class: "hint" }, `replaced by ${k.rotated_to}`) : null),
    h("td", { "data-label": "Last used" }, fmtTime(k.last_used_at)),
    h("td", { "data-label": "Expires" }, k.expires_at ? fmtTime(k.expires_at) : "never"),
    h("td", { "data-label": "User" }, k.owner || "—"),
    h("td", { "data-label": "Actions" }, live && !k.name.startsWith("session:") ? h("div", { class: "row" },
      h("button", { class: "btn small secondary", type: "button", "data-action": "rotate", onclick: async () => {
        const r = await act(() => api(`/keys/${k.prefix}/rotate`, { method: "POST", body: {} }));
        if (r) reveal(r.key, `New key ${r.prefix}; ${k.prefix} works until ${fmtTime(r.old_expires_at)}`);
      } }, "Rotate"),
      h("button", { class: "btn small danger", type: "button", "data-action": "revoke", onclick: () => {
        if (confirm(`Revoke ${k.prefix}? Requests with it are refused from now on.`)) act(() => api(`/keys/${k.prefix}`, { method: "DELETE" }), `${k.prefix} revoked`);
      } }, "Revoke")) : null));
}

function createUserForm(reload, msg, sites) {
  const name = h("input", { name: "username", required: true, maxlength: "64", pattern: "[A-Za-z0-9][A-Za-z0-9._@\\-]*", autocomplete: "off", "aria-label": "username" });
  const password = h("input", { name: "password", type: "password", required: true, minlength: "8", maxlength: "1024", autocomplete: "new-password", "aria-label": "first password" });
  const role = roleSelect("new-role", "technician");
  const picker = sitesPicker(sites, null, "new-user-sites");
  const form = trackDirty(h("form", { class: "row", id: "create-user", onsubmit: async (e) => {
    e.preventDefault();
    msg.textContent = "";
    try {
      await api("/users", { method: "POST", body: { username: name.value.trim(), password: password.value, role: role.value, sites: picker.value() } });
      toast(`User ${name.value.trim()} created`);
      form.reset();
      form.removeAttribute("data-dirty");
      await reload();
    } catch (err) { msg.textContent = explain(err); }
  } }, h("label", {}, "Name", name), h("label", {}, "Password", password), h("label", {}, "Role", role), picker.el,
  h("button", { class: "btn", type: "submit" }, "Create user")));
  return form;
}

function createKeyForm(reload, msg, reveal, sites) {
  const name = h("input", { name: "name", maxlength: "128", placeholder: "what it is for", "aria-label": "key name" });
  const role = roleSelect("key-role", "viewer", KEY_ROLES);
  const picker = sitesPicker(sites, null, "new-key-sites");
  const days = h("input", { name: "expires_in_days", type: "number", min: "1", max: "3650", step: "1", placeholder: "never", "aria-label": "expires in days" });
  const form = trackDirty(h("form", { class: "row", id: "create-key", onsubmit: async (e) => {
    e.preventDefault();
    msg.textContent = "";
    try {
      const k = await api("/keys", { method: "POST", body: { role: role.value, name: name.value.trim(), expires_in_days: days.value ? Number(days.value) : null, sites: picker.value() } });
      form.reset();
      form.removeAttribute("data-dirty");
      reveal(k.key, `New ${k.role} key ${k.prefix}`);
      await reload();
    } catch (err) { msg.textContent = explain(err); }
  } }, h("label", {}, "Name", name), h("label", {}, "Role", role), h("label", {}, "Expires in days", days), picker.el,
  h("button", { class: "btn", type: "submit" }, "Create key")));
  return form;
}

export async function usersView(view) {
  const msg = h("p", { class: "error", role: "alert" });
  const revealBox = h("div");
  const reveal = (key, what) => revealKey(revealBox, key, what);
  const userBody = h("tbody");
  const keyBody = h("tbody");
  const showStanding = h("input", { type: "checkbox", name: "all-keys", "aria-label": "show revoked, expired and session keys" });
  const sites = (await api("/nodes")).items.filter((n) => n.kind === "site");
  const reload = async () => {
    const [users, keys] = await Promise.all([api("/users"), api("/keys")]);
    userBody.replaceChildren(...(users.items.length ? users.items.map((u) => userRow(u, reload, msg, sites))
      : [h("tr", {}, h("td", { colspan: "6", class: "muted" }, "No users yet: create the first one above."))]));
    const shown = keys.items.filter((k) => showStanding.checked || (k.state === "active" && !k.name.startsWith("session:")));
    keyBody.replaceChildren(...shown.reverse().map((k) => keyRow(k, reload, msg, reveal, sites)));
  };
  showStanding.addEventListener("change", reload);
  view.replaceChildren(
    h("h1", {}, "Users and keys"),
    msg, revealBox,
    h("section", { class: "card" }, h("h2", {}, "People"), createUserForm(reload, msg, sites),
      h("div", { class: "scroll" }, h("table", { class: "stack-narrow", id: "users" },
        h("thead", {}, h("tr", {}, ["User", "Role", "Sites", "Since", "Sessions", "Actions"].map((t) => h("th", {}, t)))), userBody))),
    h("section", { class: "card" }, h("h2", {}, "API keys"),
      h("p", { class: "hint" }, "Keys are for programs and gateways. A new key is shown once; rotating gives a new one and keeps the old one working for a grace period."),
      createKeyForm(reload, msg, reveal, sites),
      h("label", { class: "hint" }, showStanding, "also show revoked, expired and login-session keys"),
      h("div", { class: "scroll" }, h("table", { class: "stack-narrow", id: "keys" },
        h("thead", {}, h("tr", {}, ["Key", "Role", "Sites", "State", "Last used", "Expires", "User", "Actions"].map((t) => h("th", {}, t)))), keyBody))));
  await reload();
  return null;
}
