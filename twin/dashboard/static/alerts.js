// Alerts: a card per alert with its numbers, actions (by role), history and advice; the alert list; the plan.
// Live updates patch the cards that changed and leave alone a card whose form someone is typing in.
import { actionButton, api, ApiError, busy, can, download, fmtTime, h, live, patchList, qty, showForm, toast, trackDirty } from "./core.js";
import { workOrderForm } from "./workorders.js";

const DONE = { acknowledge: "acknowledged", shelve: "shelved", unshelve: "unshelved", feedback: "feedback recorded", comments: "comment added" };

const STATES = ["active_unack", "active_ack", "returned_unack", "normal"];
const PRIORITIES = ["critical", "high", "medium", "low"];
const STATE_WORDS = {
  active_unack: "active, unacknowledged", active_ack: "active, acknowledged",
  returned_unack: "returned, unacknowledged", normal: "closed",
};
const ACTION_WORDS = {
  raise: "raised", reactivate: "came back", change: "changed", return: "returned", acknowledge: "acknowledged",
  comment: "comment", shelve: "shelved", unshelve: "unshelved", suppress: "suppressed", unsuppress: "unsuppressed",
  escalate: "escalated", deescalate: "de-escalated", flapping: "flapping", stable: "stable again",
};

export const alertVersion = (a) => `${a.updated_at}|${a.state}|${a.shelved_until}`;

function adviceBlock(data) {
  const box = h("div", { class: "advice", "data-advice": "" });
  if (!data) { box.append(h("span", { class: "muted" }, "Loading advice…")); return box; }
  box.append(h("div", {}, h("strong", {}, "Due "), fmtTime(data.due), h("div", { class: "hint" }, data.due_reason)));
  if (!data.advice.length) box.append(h("p", { class: "muted" }, "No advice in the knowledge base for this condition."));
  let title = null;
  for (const a of data.advice.slice(0, 4)) {
    if (a.title !== title) {
      title = a.title;
      box.append(h("div", { class: "cause" }, h("strong", {}, a.title || a.kind), a.kind === "inspect" ? " (inspect)" : ""));
    }
    box.append(h("div", { class: "cause" },
      h("span", { class: "badge" }, `${Math.round((a.confidence || 0) * 100)}%`), " ", a.cause || "",
      a.actions && a.actions.length ? h("ol", {}, a.actions.map((s) => h("li", {}, s))) : null,
      a.duration_h ? h("div", { class: "hint" }, `About ${a.duration_h} h`) : null));
  }
  const safety = [...new Set(data.advice.slice(0, 4).flatMap((a) => a.safety || []))];
  if (safety.length) box.append(h("div", { class: "hint" }, h("strong", {}, "Safety: "), safety.join("; ")));
  return box;
}

async function loadAdvice(alert, slot) {
  try {
    slot.replaceWith(adviceBlock(await api(`/alerts/${alert.id}/advice`)));
  } catch (err) {
    slot.replaceChildren(h("span", { class: "error" }, `Advice unavailable: ${err.message}`));
  }
}

// The alert's history (transitions, changes of condition, comments) and the feedback given on it.
function historyBlock(alert) {
  const body = h("div", { class: "history-body" }, h("span", { class: "muted" }, "Loading…"));
  const box = h("details", { class: "history", "data-history": "" }, h("summary", {}, "History, comments and feedback"), body);
  box.addEventListener("toggle", async () => {
    if (!box.open) return;
    try {
      const [trail, fb] = await Promise.all([api(`/alerts/${alert.id}/transitions`), api(`/alerts/${alert.id}/feedback`)]);
      const rows = [
        ...trail.map((t) => ({ at: t.at, who: t.actor, what: ACTION_WORDS[t.action] || t.action, text: t.reason, kind: t.action })),
        ...fb.map((f) => ({ at: f.at, who: f.by, what: `feedback: ${f.verdict.replace("_", " ")}`, text: [f.cause, f.comment].filter(Boolean).join(" — "), kind: "feedback" })),
      ].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
      body.replaceChildren(h("ol", { class: "timeline" }, rows.map((r) => h("li", { "data-kind": r.kind },
        h("span", { class: "hint" }, `${fmtTime(r.at)} · ${r.who}`), " ", h("strong", {}, r.what), r.text ? h("div", {}, r.text) : null))));
    } catch (err) {
      body.replaceChildren(h("span", { class: "error" }, err.message));
    }
  });
  return box;
}

// One alert with its actions; onChange(alert) is called with the updated alert after an action.
export function alertCard(alert, onChange, { advice = true } = {}) {
  const msg = h("div", { class: "error", role: "alert" });
  const forms = h("div", { class: "forms" });
  const act = async (path, body, { close = true } = {}) => {
    msg.textContent = "";
    try {
      await api(`/alerts/${alert.id}/${path}`, { method: "POST", body });
      toast(`Alert #${alert.id}: ${DONE[path] || path}`);
      if (close) forms.replaceChildren();
      window.dispatchEvent(new CustomEvent("ft-alert-changed"));
      onChange(await api(`/alerts/${alert.id}`));
    } catch (err) {
      msg.textContent = err instanceof ApiError && err.status === 403 ? `Not allowed: ${err.message}` : err.message;
    }
  };
  const open = alert.state !== "normal";
  const shelved = alert.shelved_until && Date.parse(alert.shelved_until) > Date.now();
  const acts = h("div", { class: "row actions" });
  if (alert.state === "active_unack" || alert.state === "returned_unack") {
    acts.append(actionButton("Acknowledge", "technician", () => act("acknowledge", { reason: "" })));
  }
  acts.append(actionButton("Comment", "technician", () => showForm(forms, commentForm(act, forms))));
  if (open) acts.append(actionButton("Work order", "technician", () => showForm(forms, workOrderForm({ alertId: alert.id, onDone: () => { forms.replaceChildren(); onChange(alert); }, onCancel: () => forms.replaceChildren() }))));
  if (open && !shelved) acts.append(actionButton("Shelve", "engineer", () => showForm(forms, shelveForm(act, forms))));
  if (shelved) acts.append(actionButton("Unshelve", "engineer", () => act("unshelve", { reason: "" })));
  acts.append(actionButton("Feedback", "technician", () => showForm(forms, feedbackForm(act, forms))));
  if (!can("technician")) acts.append(h("span", { class: "hint" }, "Read-only: your role is viewer."));
  const value = alert.value !== null && alert.value !== undefined
    ? h("div", { class: "numbers", "data-numbers": "" }, h("strong", {}, qty(alert.value, alert.unit)),
      alert.limit !== null && alert.limit !== undefined ? ` against a limit of ${qty(alert.limit, alert.unit)}` : "")
    : null;
  const main = h("div", { class: "alert-main" },
    h("div", { class: "row" },
      h("span", { class: `badge ${alert.priority}` }, alert.priority),
      h("span", { class: `badge ${alert.state}`, "data-state": alert.state }, STATE_WORDS[alert.state] || alert.state),
      shelved ? h("span", { class: "badge" }, `shelved until ${fmtTime(alert.shelved_until)}`) : null,
      alert.flapping ? h("span", { class: "badge warning" }, "flapping") : null,
      alert.suppressed ? h("span", { class: "badge unknown" }, "suppressed by design") : null,
      h("a", { href: `#/asset/${encodeURIComponent(alert.node)}` }, alert.node),
      h("strong", { "data-condition": "" }, alert.condition)),
    h("div", { class: "alert-title" }, alert.message || alert.rule),
    alert.reason ? h("div", { class: "reason", "data-reason": "" }, alert.reason) : null,
    value,
    h("div", { class: "meta" }, `#${alert.id} · rule ${alert.rule} · raised ${fmtTime(alert.raised_at)}`,
      alert.occurrences > 1 ? ` · ${alert.occurrences}×` : "",
      alert.acked_by ? ` · acknowledged by ${alert.acked_by} ${fmtTime(alert.acked_at)}` : "",
      alert.closed_at ? ` · closed ${fmtTime(alert.closed_at)}` : ""),
    acts, forms, msg, historyBlock(alert));
  const card = h("article", { class: "alert-item", "data-alert": alert.id, "aria-label": `alert ${alert.id}` }, main);
  if (advice) {
    const slot = adviceBlock(null);
    card.append(slot);
    loadAdvice(alert, slot);
  }
  return card;
}

function closeButton(forms) {
  return h("button", { class: "btn small secondary", type: "button", "data-close": "", onclick: () => forms.replaceChildren() }, "Cancel");
}

function commentForm(act, forms) {
  const text = h("textarea", { name: "comment", placeholder: "what you saw or did", required: true, "aria-label": "comment", maxlength: "4000" });
  const form = h("form", { class: "form-inline stack", "data-form": "comment", onsubmit: (e) => { e.preventDefault(); if (text.value.trim()) act("comments", { text: text.value.trim() }); } },
    text, h("div", { class: "row" }, h("button", { class: "btn small", type: "submit" }, "Add comment"), closeButton(forms)));
  return trackDirty(form);
}

function shelveForm(act, forms) {
  const minutes = h("input", { type: "number", min: "1", max: "1440", value: "60", "aria-label": "minutes" });
  const reason = h("input", { type: "text", placeholder: "reason (required)", required: true, "aria-label": "reason" });
  return trackDirty(h("form", { class: "form-inline row", "data-form": "shelve", onsubmit: (e) => { e.preventDefault(); act("shelve", { minutes: Number(minutes.value), reason: reason.value }); } },
    h("label", {}, "Shelve for", minutes, "min"), reason, h("button", { class: "btn small", type: "submit" }, "Shelve"), closeButton(forms)));
}

function feedbackForm(act, forms, verdictDefault = "true_fault") {
  const verdict = h("select", { "aria-label": "verdict" },
    ["true_fault", "false_alarm", "cause_found"].map((v) => h("option", { value: v, selected: v === verdictDefault }, v.replace("_", " "))));
  const cause = h("input", { type: "text", placeholder: "cause found (optional)", "aria-label": "cause" });
  const comment = h("textarea", { placeholder: "comment", "aria-label": "comment" });
  return trackDirty(h("form", { class: "form-inline stack", "data-form": "feedback", onsubmit: (e) => { e.preventDefault(); act("feedback", { verdict: verdict.value, cause: cause.value, comment: comment.value }); } },
    h("div", { class: "row" }, verdict, cause), comment, h("div", { class: "row" }, h("button", { class: "btn small", type: "submit" }, "Send feedback"), closeButton(forms))));
}

// The alarm rate of each operator area over the last 10 minutes, with its EEMUA 191 band.
export async function alarmRateLine(box) {
  try {
    const r = await api("/alerts/rate");
    box.replaceChildren(h("span", { class: "hint" }, "Alarm rate, last 10 min (EEMUA 191):"),
      ...r.bands.map((b) => h("span", { class: `badge ${b.alarms <= r.manageable ? "ok" : "alarm"}`, "data-area": b.area, title: b.band }, `${b.area} ${b.alarms} · ${b.band}`)),
      ...(r.bands.length ? [] : [h("span", { class: "hint" }, "no alarms yet")]));
  } catch { /* a convenience */ }
}

// ---- the alert list --------------------------------------------------------------------------------------

// A site filter: hidden while the caller sees one site only (a scoped user's list holds only their sites).
export function siteSelect(chosen) {
  return h("select", { name: "site", id: "site-filter", "aria-label": "site", hidden: true, "data-chosen": chosen },
    h("option", { value: "" }, "All sites"));
}

export async function fillSites(select, forest) {
  const sites = (forest || (await api("/nodes")).items).filter((n) => n.kind === "site");
  select.append(...sites.map((n) => h("option", { value: n.id, selected: n.id === select.dataset.chosen }, n.name || n.id)));
  select.hidden = sites.length < 2;
}

export async function alertsView(view, params) {
  const filters = { state: params.getAll("state"), priority: params.getAll("priority"), subtree: params.get("subtree") || "", site: params.get("site") || "", open: params.get("open") !== "0" };
  const list = h("div", { id: "alert-list" }, h("p", { class: "muted" }, "Loading…"));
  const total = h("span", { class: "muted" });
  const rate = h("div", { class: "row", id: "alarm-rate" });
  const check = (name, value, on) => h("label", { class: "chip-label" },
    h("input", { type: "checkbox", name, value, checked: on }), value.replace("_", " "));
  const form = h("form", { class: "card row no-print", id: "alert-filters", onchange: () => apply(), onsubmit: (e) => { e.preventDefault(); apply(); } },
    h("label", {}, h("input", { type: "checkbox", name: "open", checked: filters.open }), "open only"),
    h("span", { class: "hint" }, "State:"), STATES.map((s) => check("state", s, filters.state.includes(s))),
    h("span", { class: "hint" }, "Priority:"), PRIORITIES.map((p) => check("priority", p, filters.priority.includes(p))),
    siteSelect(filters.site),
    h("input", { type: "search", name: "subtree", placeholder: "asset or area id", value: filters.subtree, "aria-label": "asset subtree" }));
  view.replaceChildren(h("h1", {}, "Alerts ", total), rate, form, h("div", { class: "card" }, list));
  fillSites(form.elements.site).catch(() => {});

  function apply() {
    const q = new URLSearchParams();
    for (const input of form.querySelectorAll("input[type=checkbox]:checked")) if (input.name !== "open") q.append(input.name, input.value);
    if (!form.elements.open.checked) q.set("open", "0");
    if (form.elements.site.value) q.set("site", form.elements.site.value);
    if (form.elements.subtree.value.trim()) q.set("subtree", form.elements.subtree.value.trim());
    history.replaceState(null, "", `#/alerts${q.toString() ? "?" + q : ""}`);
    list.replaceChildren();
    load();
  }

  async function load() {
    const q = new URLSearchParams({ limit: "100" });
    for (const input of form.querySelectorAll("input[type=checkbox]:checked")) if (input.name !== "open") q.append(input.name, input.value);
    if (form.elements.open.checked) q.set("open", "true");
    if (form.elements.site.value) q.set("site", form.elements.site.value);
    if (form.elements.subtree.value.trim()) q.set("subtree", form.elements.subtree.value.trim());
    try {
      const page = await api(`/alerts?${q}`);
      total.textContent = `(${page.total})`;
      for (const p of list.querySelectorAll(":scope > p")) p.remove();
      patchList(list, page.items, (a) => alertCard(a, () => load()), alertVersion, () => h("p", { class: "muted" }, "No alerts match."));
    } catch (err) {
      list.replaceChildren(h("p", { class: "error" }, err.message));
    }
  }
  await Promise.all([load(), alarmRateLine(rate)]);
  let pending = null;
  return live.on((event) => {
    if (event !== "alerts" && event !== "resync") return;
    clearTimeout(pending);
    pending = setTimeout(() => { load(); alarmRateLine(rate); }, 300);  // a burst of changes reloads once
  });
}

// ---- the maintenance plan --------------------------------------------------------------------------------

export async function planView(view) {
  const body = h("tbody");
  const msg = h("p", { class: "error", role: "alert" });
  const exportButton = (label, path, name) => h("button", { class: "btn secondary no-print", type: "button", "data-export": path.split(".").pop(),
    onclick: async () => { try { toast(`Saved ${await download(path, name)}`); } catch (err) { msg.textContent = err.message; } } }, label);
  view.replaceChildren(
    h("div", { class: "row" }, h("h1", {}, "Maintenance plan"), h("span", { class: "spacer" }),
      exportButton("Export CSV", "/maintenance-plan.csv", "maintenance-plan.csv"),
      exportButton("Export calendar", "/maintenance-plan.ics", "maintenance-plan.ics"),
      h("button", { class: "btn secondary no-print", type: "button", onclick: () => window.print() }, "Print")),
    h("p", { class: "muted", id: "plan-generated", role: "status" }), msg,
    h("div", { class: "card scroll" }, h("table", { id: "plan", class: "stack-narrow" },
      h("thead", {}, h("tr", {}, ["Due", "Priority", "Asset", "Condition", "What to do", "Parts / skills", "Work order"].map((t) => h("th", {}, t)))),
      body)));

  function row(item) {
    const best = item.advice[0];
    const wo = item.work_orders || [];
    const forms = h("div", { class: "forms" });
    const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
    return h("tr", { class: item.overdue ? "overdue" : "", "data-alert": item.alert_id },
      cell("Due", h("span", { class: "nowrap" }, fmtTime(item.due)), item.overdue ? h("div", { class: "error" }, "overdue") : null, h("div", { class: "hint" }, item.due_reason)),
      cell("Priority", h("span", { class: `badge ${item.priority}` }, item.priority)),
      cell("Asset", h("a", { href: `#/asset/${encodeURIComponent(item.node)}` }, item.node)),
      cell("Condition", h("strong", {}, item.condition), h("div", { class: "hint" }, item.reason || item.rule)),
      cell("What to do", best ? [h("strong", {}, best.title), best.actions.length ? h("ol", {}, best.actions.map((a) => h("li", {}, a))) : null] : h("span", { class: "muted" }, "inspect")),
      cell("Parts / skills", best ? [...(best.parts || []).map((p) => h("div", {}, `${p.quantity || 1} × ${p.part}${p.number ? " (" + p.number + ")" : ""}`)), ...(best.skills || []).map((s) => h("div", { class: "hint" }, s))] : ""),
      cell("Work order", wo.length
        ? wo.map((w) => h("div", {}, h("a", { href: `#/work-orders?id=${w.id}` }, `#${w.id}`), ` ${w.state.replace("_", " ")}${w.assignee ? " · " + w.assignee : ""}`))
        : [actionButton("Work order", "technician", () => showForm(forms, workOrderForm({ alertId: item.alert_id, onDone: () => { forms.replaceChildren(); load(); }, onCancel: () => forms.replaceChildren() }))), forms]));
  }

  async function load() {
    if (busy(body)) { deferred = true; return; }  // someone is filling in a work order: after that
    deferred = false;
    const plan = await api("/maintenance-plan");
    document.getElementById("plan-generated").textContent = `${plan.count} open items, generated ${fmtTime(plan.generated_at)}, ordered by due date; updated live.`;
    const items = plan.items.map((i) => ({ ...i, id: i.alert_id }));
    patchList(body, items, row, (i) => `${i.due}|${i.state}|${i.priority}|${i.overdue}|${JSON.stringify(i.work_orders)}`,
      () => h("tr", {}, h("td", { colspan: "7", class: "muted" }, "Nothing to do.")));
  }
  let deferred = false;
  await load();
  let pending = null;
  const again = setInterval(() => { if (deferred && !busy(body)) load().catch(() => {}); }, 1000);
  const off = live.on((event) => {
    if (!["alerts", "workorders", "resync"].includes(event)) return;
    clearTimeout(pending);
    pending = setTimeout(() => load().catch(() => {}), 400);
  });
  return () => { off(); clearInterval(again); clearTimeout(pending); };
}
