// The audit trail, for admins (#/audit): who changed what, when, from where, with the state before and after.
// Filters live in the address (#/audit?actor=ada&action=user.), so a view can be bookmarked or shared.
import { api, download, fmtTime, h, toast } from "./core.js";

const FILTERS = ["actor", "action", "target", "since", "until"];
const PAGE = 100;

const localToIso = (v) => (v ? new Date(v).toISOString() : "");
const isoToLocal = (iso) => {  // an ISO time as a datetime-local value, in the browser's zone
  const d = new Date(iso);
  if (!iso || isNaN(d)) return "";
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}T${two(d.getHours())}:${two(d.getMinutes())}`;
};
const TIMES = new Set(["since", "until"]);

function query(params, extra = {}) {
  const q = new URLSearchParams();
  for (const f of FILTERS) if (params.get(f)) q.set(f, params.get(f));
  for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined) q.set(k, v);
  return q.toString();
}

function change(before, after) {
  const keys = [...new Set([...Object.keys(before || {}), ...Object.keys(after || {})])];
  const text = (v) => (v === undefined ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const changed = keys.filter((k) => JSON.stringify((before || {})[k]) !== JSON.stringify((after || {})[k]));
  if (!before) return keys.map((k) => `${k}: ${text(after[k])}`).join(" · ");
  if (!after) return `was ${keys.map((k) => `${k}: ${text(before[k])}`).join(" · ")}`;
  return (changed.length ? changed : keys).map((k) => `${k}: ${text(before[k])} → ${text(after[k])}`).join(" · ");
}

function row(r) {
  return h("tr", { "data-id": r.id },
    h("td", { "data-label": "When", class: "nowrap" }, fmtTime(r.at)),
    h("td", { "data-label": "Who" }, r.actor, r.address ? h("div", { class: "hint" }, r.address) : null),
    h("td", { "data-label": "What" }, h("code", {}, r.action)),
    h("td", { "data-label": "Target" }, r.target),
    h("td", { "data-label": "Change" }, change(r.before, r.after) || "—"));
}

export async function auditView(view, params) {
  const inputs = Object.fromEntries(FILTERS.map((f) => [f, h("input", {
    name: f, value: TIMES.has(f) ? isoToLocal(params.get(f)) : params.get(f) || "",
    type: TIMES.has(f) ? "datetime-local" : "text", "aria-label": f,
    placeholder: { actor: "ada, key ftk_…", action: "user.disable, alert.", target: "alert:42, user:ada" }[f] || "",
  })]));
  const body = h("tbody");
  const more = h("button", { class: "btn secondary", type: "button", hidden: true }, "Older");
  const status = h("p", { class: "muted", role: "status" });
  let next = null;
  const load = async (append) => {
    const page = await api(`/audit?${query(params, { limit: PAGE, before_id: append ? next : null })}`);
    if (!append) body.replaceChildren();
    body.append(...page.items.map(row));
    if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No records match.")));
    next = page.next_before_id;
    more.hidden = !next;
    status.textContent = `${body.querySelectorAll("tr[data-id]").length} records shown, newest first`;
  };
  more.addEventListener("click", () => load(true).catch((err) => { status.textContent = err.message; }));
  const form = h("form", { class: "row", id: "audit-filters", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const f of FILTERS) {
      const v = TIMES.has(f) ? localToIso(inputs[f].value) : inputs[f].value.trim();
      if (v) q.set(f, v);
    }
    location.hash = `#/audit${q.toString() ? `?${q}` : ""}`;
  } },
  ...FILTERS.map((f) => h("label", {}, f, inputs[f])),
  h("button", { class: "btn", type: "submit" }, "Filter"),
  h("button", { class: "btn secondary", type: "button", "data-action": "export", onclick: async () => {
    try { toast(`Saved ${await download(`/audit.csv?${query(params)}`, "audit.csv")}`); } catch (err) { status.textContent = err.message; }
  } }, "Export CSV"));
  view.replaceChildren(
    h("h1", {}, "Audit trail"),
    h("section", { class: "card" }, form),
    h("section", { class: "card" }, status, h("div", { class: "scroll" }, h("table", { class: "stack-narrow", id: "audit" },
      h("thead", {}, h("tr", {}, ["When", "Who", "What", "Target", "Change"].map((t) => h("th", {}, t)))), body)), more));
  await load(false);
  return null;
}
