// Shared pieces of the dashboard: the API client, the signed-in user and role checks, DOM helpers, the live feed.

const ROLES = ["viewer", "technician", "engineer", "admin"];
const TOKEN = "factory-twin.token";

export const session = { token: sessionStorage.getItem(TOKEN) || "", who: null };

export function saveToken(token) {
  session.token = token;
  if (token) sessionStorage.setItem(TOKEN, token); else sessionStorage.removeItem(TOKEN);
}

export function can(role) {
  if (!session.who) return false;
  if (role === "admin" && session.who.sites) return false;  // administration spans every site (docs/sites.md)
  return ROLES.indexOf(session.who.role) >= ROLES.indexOf(role);
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// fetch a path under /api/v1 with the bearer token; JSON in and out; problem details become ApiError
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(`/api/v1${path}`, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "the platform cannot be reached");
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    if (res.status === 401 && path !== "/session") window.dispatchEvent(new CustomEvent("ft-unauthenticated"));
    throw new ApiError(res.status, data.detail || res.statusText);
  }
  return data;
}

// h("a", {href: "#/", class: "x", onclick: fn}, "text", child...): a DOM element; text is never parsed as HTML
export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = typeof iso === "number" ? new Date(iso) : new Date(iso);
  return d.toLocaleString([], { dateStyle: "short", timeStyle: "medium" });
}

export function ago(ms) {
  if (ms === null || ms === undefined || !isFinite(ms)) return "—";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

// A button for an action that needs `role`: disabled, with the reason, for users below it.
export function actionButton(label, role, onclick, cls = "") {
  const allowed = can(role);
  return h("button", {
    type: "button", class: `btn small ${cls}`, disabled: !allowed, "data-action": label.toLowerCase(),
    title: allowed ? label : `needs the ${role} role`, onclick: allowed ? onclick : null,
  }, label);
}

// Show `form` in its slot and put the focus at once where the person must type: its first required field, else
// its first field (a shelve form's reason, not the minutes it already holds).
export function showForm(slot, form) {
  slot.replaceChildren(form);
  const first = form.querySelector(":is(input, textarea, select)[required]")
    || form.querySelector("input:not([type=hidden]), textarea, select");
  if (first) first.focus();
}

// A value with its unit, as people write it: "212 min", "0.31 g", "87 %".
export function qty(value, unit) {
  if (value === null || value === undefined) return "—";
  const n = typeof value === "number" ? Number(value.toPrecision(4)).toString() : String(value);
  return unit ? `${n} ${unit}` : n;
}

// Whether a person is busy in this part of the page: a field has the focus, or holds what they typed.
// Live updates leave such a part alone until they are done, so nothing they type is wiped.
export function busy(el) {
  if (!el) return false;
  if (el.contains(document.activeElement) && document.activeElement.matches("input, textarea, select")) return true;
  for (const f of el.querySelectorAll("form[data-dirty]")) if (f.isConnected) return true;
  return false;
}

// Mark a form dirty once something is typed in it (busy() then protects it even after it loses focus).
export function trackDirty(form) {
  form.addEventListener("input", () => form.setAttribute("data-dirty", ""));
  return form;
}

// Put `items` into `list` as elements made by `render`, keyed by id: an element whose item did not change
// (same `version`) stays, one that did is replaced, unless a person is busy in it (it is kept and marked stale).
// Existing elements are never moved out of the way of a busy one, so its focus and typing survive.
export function patchList(list, items, render, version, empty) {
  const old = new Map([...list.children].filter((c) => c.dataset.key).map((c) => [c.dataset.key, c]));
  const next = [];
  for (const item of items) {
    const key = String(item.id);
    let el = old.get(key);
    old.delete(key);
    if (el && busy(el)) {
      if (el.dataset.version !== version(item)) el.dataset.stale = "";
    } else if (!el || el.dataset.version !== version(item)) {
      const was = el;
      el = render(item);
      el.dataset.key = key;
      el.dataset.version = version(item);
      if (was) keepOpen(was, el);
    }
    next.push(el);
  }
  for (const el of old.values()) if (busy(el)) next.push(el);  // gone from the list, but someone is typing in it
  if (!next.length && empty) next.push(empty());
  const keep = new Set(next);
  for (const c of [...list.children]) if (!keep.has(c)) c.remove();  // first, so what stays need not move
  let cursor = list.firstChild;
  for (const el of next) {
    if (el === cursor) { cursor = cursor.nextSibling; continue; }
    list.insertBefore(el, cursor);  // a new or replaced element goes in front; those already in place stay
  }
}

// A replaced element keeps the disclosures (history...) a person had opened in the old one.
function keepOpen(was, now) {
  const opened = [...was.querySelectorAll("details")].map((d) => d.open);
  [...now.querySelectorAll("details")].forEach((d, i) => { if (opened[i]) d.open = true; });
}

// Fetch a file from the API with the bearer token and hand it to the browser as a download.
export async function download(path, fallbackName) {
  const res = await fetch(`/api/v1${path}`, { headers: { Authorization: `Bearer ${session.token}` } });
  if (!res.ok) throw new ApiError(res.status, res.statusText);
  const disposition = res.headers.get("Content-Disposition") || "";
  const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || fallbackName;
  const url = URL.createObjectURL(await res.blob());
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return name;
}

// A short confirmation at the bottom of the screen (an action's card is redrawn, so it cannot say it there).
export function toast(text) {
  let box = document.getElementById("toast");
  if (!box) {
    box = h("div", { id: "toast", class: "toast", role: "status", "aria-live": "polite" });
    document.body.append(box);
  }
  box.textContent = text;
  box.hidden = false;
  clearTimeout(box._timer);
  box._timer = setTimeout(() => { box.hidden = true; }, 4000);
}

// ---- the live feed: Server-Sent Events read with fetch (so the bearer token goes in a header) ----------

export const live = {
  state: "off", listeners: new Set(), lastEvent: 0, heartbeatS: 5, serverOffset: 0, controller: null,
  retry: 1000, timer: null, bye: false,

  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); },

  start() {
    if (this.controller) return;
    this._setState("connecting");
    this._connect();
    this.timer = this.timer || setInterval(() => this._watch(), 1000);
  },

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
    clearInterval(this.timer);
    this.timer = null;
    this._setState("off");
  },

  // server time estimate, corrected by the heartbeat, for ages that do not depend on the browser's clock
  now() { return Date.now() + this.serverOffset; },

  async _connect() {
    const controller = new AbortController();
    this.controller = controller;
    try {
      const res = await fetch("/api/v1/live", {
        headers: { Authorization: `Bearer ${session.token}`, Accept: "text/event-stream" }, signal: controller.signal,
      });
      if (res.status === 401) { window.dispatchEvent(new CustomEvent("ft-unauthenticated")); return; }
      if (!res.ok || !res.body) throw new Error(`live feed: HTTP ${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          this._message(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
        }
      }
    } catch (err) {
      if (controller.signal.aborted && this.controller !== controller) return;
    }
    if (this.controller !== controller) return;  // replaced or stopped meanwhile
    this.controller = null;
    if (this.bye) {  // the server ended the stream on purpose: straight back, no alarm
      this.bye = false;
      this._connect();
      return;
    }
    this._setState("lost");
    setTimeout(() => { if (!this.controller && this.timer) this._connect(); }, this.retry);
    this.retry = Math.min(this.retry * 2, 15000);
  },

  _message(block) {
    let event = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    this.lastEvent = Date.now();
    this.retry = 1000;
    let payload = null;
    try { payload = data ? JSON.parse(data) : null; } catch { return; }
    if (payload && payload.now) this.serverOffset = Date.parse(payload.now) - Date.now();
    if (event === "hello") this.heartbeatS = payload.heartbeat_s || 5;
    if (event === "bye") { this.bye = true; return; }
    this._setState("live");
    for (const fn of this.listeners) {
      try { fn(event, payload); } catch (err) { console.error(err); }
    }
  },

  _watch() {
    // no event, not even a heartbeat, for 2.5 intervals: the link is gone though TCP has not noticed yet
    if (this.state === "live" && Date.now() - this.lastEvent > this.heartbeatS * 2500) {
      this._setState("lost");
      if (this.controller) this.controller.abort();
      this.controller = null;
      this._connect();
    }
    for (const fn of this.listeners) fn("tick", null);
  },

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    const pill = document.getElementById("conn");
    pill.dataset.state = state;
    pill.textContent = { live: "● live", connecting: "connecting…", lost: "connection lost", off: "offline" }[state];
    const banner = document.getElementById("banner");
    if (state === "lost") {
      banner.hidden = false;
      banner.className = "banner";
      banner.textContent = "Connection to the platform lost — values shown may be out of date. Reconnecting…";
    } else if (banner.className === "banner") {
      banner.hidden = true;
    }
    for (const fn of this.listeners) fn("state", state);
  },
};
