// Shared pieces of the dashboard: the API client, the signed-in user and role checks, DOM helpers, the live feed.

const ROLES = ["viewer", "technician", "engineer", "admin"];
const TOKEN = "factory-twin.token";

export const session = { token: sessionStorage.getItem(TOKEN) || "", who: null };

export function saveToken(token) {
  session.token = token;
  if (token) sessionStorage.setItem(TOKEN, token); else sessionStorage.removeItem(TOKEN);
}

export function can(role) {
  return !!session.who && ROLES.indexOf(session.who.role) >= ROLES.indexOf(role);
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
