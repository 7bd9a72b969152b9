// Alerts: a card per alert with its actions (by role) and its advice beside it; the alert list; the plan.
import { actionButton, api, ApiError, can, fmtTime, h, live, toast } from "./core.js";

const DONE = { acknowledge: "acknowledged", shelve: "shelved", unshelve: "unshelved", feedback: "feedback recorded" };

const STATES = ["active_unack", "active_ack", "returned_unack", "normal"];
const PRIORITIES = ["critical", "high", "medium", "low"];
const STATE_WORDS = {
  active_unack: "active, unacknowledged", active_ack: "active, acknowledged",
  returned_unack: "returned, unacknowledged", normal: "closed",
};

function adviceBlock(data) {
  const box = h("div", { class: "advice", "data-advice": "" });
  if (!data) { box.append(h("span", { class: "muted" }, "Loading advice…")); return box; }
  box.append(h("div", {}, h("strong", {}, "Due "), fmtTime(data.due), h("span", { class: "hint" }, ` — ${data.due_reason}`)));
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

// One alert with its actions; onChange(alert) is called with the updated alert after an action.
export function alertCard(alert, onChange, { advice = true } = {}) {
  const msg = h("div", { class: "error", role: "alert" });
  const act = async (path, body) => {
    msg.textContent = "";
    try {
      await api(`/alerts/${alert.id}/${path}`, { method: "POST", body });
      toast(`Alert #${alert.id}: ${DONE[path] || path}`);
      window.dispatchEvent(new CustomEvent("ft-alert-changed"));
      onChange(await api(`/alerts/${alert.id}`));
    } catch (err) {
      msg.textContent = err instanceof ApiError && err.status === 403 ? `Not allowed: ${err.message}` : err.message;
    }
  };
  const forms = h("div");
  const open = alert.state !== "normal";
  const shelved = alert.shelved_until && Date.parse(alert.shelved_until) > Date.now();
  const acts = h("div", { class: "row actions" });
  if (alert.state === "active_unack" || alert.state === "returned_unack") {
    acts.append(actionButton("Acknowledge", "technician", () => act("acknowledge", { reason: "" })));
  }
  if (open && !shelved) acts.append(actionButton("Shelve", "engineer", () => forms.replaceChildren(shelveForm(act))));
  if (shelved) acts.append(actionButton("Unshelve", "engineer", () => act("unshelve", { reason: "" })));
  if (open) acts.append(actionButton("Resolve", "technician", () => forms.replaceChildren(resolveForm(alert, act))));
  acts.append(actionButton("Feedback", "technician", () => forms.replaceChildren(feedbackForm(act))));
  if (!can("technician")) acts.append(h("span", { class: "hint" }, "Read-only: your role is viewer."));
  const main = h("div", {},
    h("div", { class: "row" },
      h("span", { class: `badge ${alert.priority}` }, alert.priority),
      h("span", { class: `badge ${alert.state}`, "data-state": alert.state }, STATE_WORDS[alert.state] || alert.state),
      shelved ? h("span", { class: "badge" }, `shelved until ${fmtTime(alert.shelved_until)}`) : null,
      alert.flapping ? h("span", { class: "badge warning" }, "flapping") : null,
      h("a", { href: `#/asset/${encodeURIComponent(alert.node)}` }, alert.node),
      h("strong", {}, alert.condition)),
    h("div", {}, alert.message || alert.rule),
    h("div", { class: "meta" }, `#${alert.id} · rule ${alert.rule} · raised ${fmtTime(alert.raised_at)}`,
      alert.occurrences > 1 ? ` · ${alert.occurrences}×` : "",
      alert.acked_by ? ` · acknowledged by ${alert.acked_by} ${fmtTime(alert.acked_at)}` : "",
      alert.closed_at ? ` · closed ${fmtTime(alert.closed_at)}` : ""),
    acts, forms, msg);
  const card = h("div", { class: "alert-item", "data-alert": alert.id }, main);
  if (advice) {
    const slot = adviceBlock(null);
    card.append(slot);
    loadAdvice(alert, slot);
  }
  return card;
}

function shelveForm(act) {
  const minutes = h("input", { type: "number", min: "1", max: "1440", value: "60", "aria-label": "minutes" });
  const reason = h("input", { type: "text", placeholder: "reason (required)", required: true, "aria-label": "reason" });
  return h("form", { class: "form-inline row", onsubmit: (e) => { e.preventDefault(); act("shelve", { minutes: Number(minutes.value), reason: reason.value }); } },
    h("label", {}, "Shelve for", minutes, "min"), reason, h("button", { class: "btn small", type: "submit" }, "Shelve"));
}

function feedbackForm(act, verdictDefault = "true_fault") {
  const verdict = h("select", { "aria-label": "verdict" },
    ["true_fault", "false_alarm", "cause_found"].map((v) => h("option", { value: v, selected: v === verdictDefault }, v.replace("_", " "))));
  const cause = h("input", { type: "text", placeholder: "cause found (optional)", "aria-label": "cause" });
  const comment = h("textarea", { placeholder: "comment", "aria-label": "comment" });
  return h("form", { class: "form-inline stack", onsubmit: (e) => { e.preventDefault(); act("feedback", { verdict: verdict.value, cause: cause.value, comment: comment.value }); } },
    h("div", { class: "row" }, verdict, cause), comment, h("button", { class: "btn small", type: "submit" }, "Send feedback"));
}

// Resolve: record the cause found and, when the condition has returned to normal, acknowledge to close it.
function resolveForm(alert, act) {
  const cause = h("input", { type: "text", placeholder: "what was done / the cause", required: true, "aria-label": "cause" });
  return h("form", { class: "form-inline row", onsubmit: async (e) => {
    e.preventDefault();
    await act("feedback", { verdict: "cause_found", cause: cause.value, comment: "resolved" });
    if (alert.state === "returned_unack") await act("acknowledge", { reason: `resolved: ${cause.value}` });
  } }, cause, h("button", { class: "btn small", type: "submit" }, "Resolve"),
  h("span", { class: "hint" }, alert.active ? "The alert closes once its condition is back to normal." : "Closes the alert."));
}

// ---- the alert list --------------------------------------------------------------------------------------

export async function alertsView(view, params) {
  const filters = { state: params.getAll("state"), priority: params.getAll("priority"), subtree: params.get("subtree") || "", open: params.get("open") !== "0" };
  const list = h("div", { id: "alert-list" }, h("p", { class: "muted" }, "Loading…"));
  const total = h("span", { class: "muted" });
  const check = (name, value, on) => h("label", { class: "chip-label" },
    h("input", { type: "checkbox", name, value, checked: on }), value.replace("_", " "));
  const form = h("form", { class: "card row no-print", id: "alert-filters", onchange: () => apply(), onsubmit: (e) => { e.preventDefault(); apply(); } },
    h("label", {}, h("input", { type: "checkbox", name: "open", checked: filters.open }), "open only"),
    h("span", { class: "hint" }, "State:"), STATES.map((s) => check("state", s, filters.state.includes(s))),
    h("span", { class: "hint" }, "Priority:"), PRIORITIES.map((p) => check("priority", p, filters.priority.includes(p))),
    h("input", { type: "search", name: "subtree", placeholder: "asset or area id", value: filters.subtree, "aria-label": "asset subtree" }));
  view.replaceChildren(h("h1", {}, "Alerts ", total), form, h("div", { class: "card" }, list));

  function apply() {
    const q = new URLSearchParams();
    for (const input of form.querySelectorAll("input[type=checkbox]:checked")) if (input.name !== "open") q.append(input.name, input.value);
    if (!form.elements.open.checked) q.set("open", "0");
    if (form.elements.subtree.value.trim()) q.set("subtree", form.elements.subtree.value.trim());
    history.replaceState(null, "", `#/alerts${q.toString() ? "?" + q : ""}`);
    load();
  }

  async function load() {
    const q = new URLSearchParams({ limit: "100" });
    for (const input of form.querySelectorAll("input[type=checkbox]:checked")) if (input.name !== "open") q.append(input.name, input.value);
    if (form.elements.open.checked) q.set("open", "true");
    if (form.elements.subtree.value.trim()) q.set("subtree", form.elements.subtree.value.trim());
    try {
      const page = await api(`/alerts?${q}`);
      total.textContent = `(${page.total})`;
      list.replaceChildren(...(page.items.length ? page.items.map((a) => alertCard(a, () => load())) : [h("p", { class: "muted" }, "No alerts match.")]));
    } catch (err) {
      list.replaceChildren(h("p", { class: "error" }, err.message));
    }
  }
  await load();
  let pending = null;
  return live.on((event) => {
    if (event !== "alerts") return;
    clearTimeout(pending);
    pending = setTimeout(load, 300);  // a burst of changes reloads once
  });
}

// ---- the maintenance plan --------------------------------------------------------------------------------

export async function planView(view) {
  const body = h("tbody");
  view.replaceChildren(
    h("div", { class: "row" }, h("h1", {}, "Maintenance plan"), h("span", { class: "spacer" }),
      h("button", { class: "btn secondary no-print", type: "button", onclick: () => window.print() }, "Print")),
    h("p", { class: "muted", id: "plan-generated" }),
    h("div", { class: "card" }, h("table", { id: "plan" },
      h("thead", {}, h("tr", {}, ["Due", "Priority", "Asset", "Condition", "What to do", "Parts / skills", "Done"].map((t) => h("th", {}, t)))),
      body)));
  const plan = await api("/maintenance-plan");
  document.getElementById("plan-generated").textContent = `${plan.count} open items, generated ${fmtTime(plan.generated_at)}, ordered by due date.`;
  if (!plan.items.length) body.append(h("tr", {}, h("td", { colspan: "7", class: "muted" }, "Nothing to do.")));
  for (const item of plan.items) {
    const best = item.advice[0];
    body.append(h("tr", { class: item.overdue ? "overdue" : "" },
      h("td", { class: "nowrap" }, fmtTime(item.due), item.overdue ? h("div", { class: "error" }, "overdue") : null, h("div", { class: "hint" }, item.due_reason)),
      h("td", {}, h("span", { class: `badge ${item.priority}` }, item.priority)),
      h("td", { class: "nowrap" }, h("a", { href: `#/asset/${encodeURIComponent(item.node)}` }, item.node)),
      h("td", {}, item.condition, h("div", { class: "hint" }, item.rule)),
      h("td", {}, best ? [h("strong", {}, best.title), best.actions.length ? h("ol", {}, best.actions.map((a) => h("li", {}, a))) : null] : h("span", { class: "muted" }, "inspect")),
      h("td", {}, best ? [...(best.parts || []).map((p) => h("div", {}, p.name || p.part || JSON.stringify(p))), ...(best.skills || []).map((s) => h("div", { class: "hint" }, s))] : ""),
      h("td", {}, "☐")));
  }
  return null;
}
