// Work orders: the form that opens one from an alert or a plan item, and the list a shift works from
// (take it, note, complete with the verdict, cancel). Live updates patch cards and spare the one being filled in.
import { actionButton, api, ApiError, can, fmtTime, h, live, patchList, showForm, toast, trackDirty } from "./core.js";

const STATE_WORDS = { open: "open", in_progress: "in progress", done: "done", cancelled: "cancelled" };
const PRIORITIES = ["critical", "high", "medium", "low"];

const localInput = (iso) => {  // an ISO time as the value of a datetime-local input, in the browser's zone
  if (!iso) return "";
  const d = new Date(iso);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}T${two(d.getHours())}:${two(d.getMinutes())}`;
};

// A form for a new work order, filled in from the knowledge base's advice for the alert.
export function workOrderForm({ alertId, onDone, onCancel }) {
  const msg = h("div", { class: "error", role: "alert" });
  const task = h("input", { name: "task", required: true, maxlength: "200", "aria-label": "task" });
  const priority = h("select", { name: "priority", "aria-label": "priority" }, PRIORITIES.map((p) => h("option", { value: p }, p)));
  const due = h("input", { name: "due", type: "datetime-local", "aria-label": "due" });
  const assignee = h("input", { name: "assignee", maxlength: "128", placeholder: "who does it", "aria-label": "assignee" });
  const steps = h("ol", { class: "steps" });
  const hint = h("div", { class: "hint" });
  let draft = null;
  const form = h("form", { class: "form-inline stack", "data-form": "work-order", onsubmit: async (e) => {
    e.preventDefault();
    msg.textContent = "";
    try {
      const wo = await api("/work-orders", { method: "POST", body: {
        node: draft.node, task: task.value.trim(), task_source: draft.task_source, steps: draft.steps, parts: draft.parts,
        priority: priority.value, due: due.value ? new Date(due.value).toISOString() : null, assignee: assignee.value.trim(),
        alert_ids: draft.alert_ids,
      } });
      toast(`Work order #${wo.id} opened`);
      window.dispatchEvent(new CustomEvent("ft-workorders-changed"));
      onDone(wo);
    } catch (err) {
      msg.textContent = err instanceof ApiError && err.status === 403 ? `Not allowed: ${err.message}` : err.message;
    }
  } },
  h("strong", {}, "New work order"), h("label", { class: "stack" }, "Task", task), steps,
  h("div", { class: "row" }, h("label", {}, "Priority", priority), h("label", {}, "Due", due), h("label", {}, "Assignee", assignee)),
  hint, h("div", { class: "row" }, h("button", { class: "btn small", type: "submit" }, "Open work order"),
    h("button", { class: "btn small secondary", type: "button", onclick: onCancel }, "Cancel")), msg);
  api(`/work-orders/draft?alert_id=${alertId}`).then((d) => {
    draft = d;
    if (!form.hasAttribute("data-dirty")) {
      task.value = d.task;
      priority.value = d.priority;
      due.value = localInput(d.due);
    }
    steps.replaceChildren(...d.steps.map((s) => h("li", {}, s)));
    hint.textContent = [d.due_reason, d.task_source ? `from ${d.task_source}` : ""].filter(Boolean).join(" · ");
  }).catch((err) => { msg.textContent = err.message; });
  return trackDirty(form);
}

function completeForm(wo, act, forms) {
  const verdict = h("select", { name: "verdict", "aria-label": "verdict" },
    (wo.alert_ids.length ? [] : [h("option", { value: "" }, "no verdict")]).concat(
      ["true_fault", "false_alarm", "cause_found"].map((v) => h("option", { value: v }, v.replace("_", " ")))));
  const cause = h("input", { name: "cause", placeholder: "what was found", maxlength: "2000", "aria-label": "cause" });
  const notes = h("textarea", { name: "notes", placeholder: "what was done", "aria-label": "notes" });
  const hours = h("input", { name: "time_spent_h", type: "number", min: "0", step: "0.25", placeholder: "h", "aria-label": "hours spent" });
  return trackDirty(h("form", { class: "form-inline stack", "data-form": "complete", onsubmit: (e) => {
    e.preventDefault();
    act("complete", { verdict: verdict.value || null, cause: cause.value, notes: notes.value, time_spent_h: hours.value === "" ? null : Number(hours.value) });
  } },
  h("div", { class: "row" }, h("label", {}, "Verdict", verdict), h("label", {}, "Hours", hours)), cause, notes,
  wo.alert_ids.length ? h("div", { class: "hint" }, "The verdict is recorded on the alerts as feedback for the models; they are acknowledged.") : null,
  h("div", { class: "row" }, h("button", { class: "btn small", type: "submit" }, "Complete"),
    h("button", { class: "btn small secondary", type: "button", onclick: () => forms.replaceChildren() }, "Cancel"))));
}

function textForm(label, field, path, act, forms) {
  const text = h("input", { name: field, required: true, maxlength: "4000", "aria-label": label });
  return trackDirty(h("form", { class: "form-inline row", "data-form": path, onsubmit: (e) => { e.preventDefault(); act(path, { [field]: text.value }); } },
    text, h("button", { class: "btn small", type: "submit" }, label),
    h("button", { class: "btn small secondary", type: "button", onclick: () => forms.replaceChildren() }, "Cancel")));
}

export function workOrderCard(wo, onChange) {
  const msg = h("div", { class: "error", role: "alert" });
  const forms = h("div", { class: "forms" });
  const act = async (path, body) => {
    msg.textContent = "";
    try {
      const next = await api(`/work-orders/${wo.id}/${path}`, { method: "POST", body });
      toast(`Work order #${wo.id}: ${{ start: "started", complete: "done", cancel: "cancelled", notes: "note added" }[path] || path}`);
      forms.replaceChildren();
      window.dispatchEvent(new CustomEvent("ft-alert-changed"));
      onChange(next);
    } catch (err) {
      msg.textContent = err instanceof ApiError && err.status === 403 ? `Not allowed: ${err.message}` : err.message;
    }
  };
  const active = wo.state === "open" || wo.state === "in_progress";
  const acts = h("div", { class: "row actions" });
  if (wo.state === "open") acts.append(actionButton("Start", "technician", () => act("start", {})));
  if (active) {
    acts.append(actionButton("Complete", "technician", () => showForm(forms, completeForm(wo, act, forms))));
    acts.append(actionButton("Note", "technician", () => showForm(forms, textForm("Add note", "text", "notes", act, forms))));
    acts.append(actionButton("Cancel work", "technician", () => showForm(forms, textForm("Cancel work order", "reason", "cancel", act, forms))));
  }
  if (!can("technician")) acts.append(h("span", { class: "hint" }, "Read-only: your role is viewer."));
  return h("article", { class: "wo-item", "data-wo": wo.id, "aria-label": `work order ${wo.id}` },
    h("div", { class: "row" },
      h("span", { class: `badge ${wo.priority}` }, wo.priority),
      h("span", { class: `badge wo-${wo.state}`, "data-state": wo.state }, STATE_WORDS[wo.state]),
      wo.overdue ? h("span", { class: "badge alarm" }, "overdue") : null,
      h("a", { href: `#/asset/${encodeURIComponent(wo.node)}` }, wo.node),
      h("strong", {}, `#${wo.id} ${wo.task}`)),
    h("div", { class: "meta" }, `due ${fmtTime(wo.due)} · ${wo.assignee ? "assigned to " + wo.assignee : "unassigned"} · opened by ${wo.created_by} ${fmtTime(wo.created_at)}`,
      wo.alert_ids.length ? ` · alerts ${wo.alert_ids.map((i) => "#" + i).join(", ")}` : ""),
    wo.steps.length ? h("ol", { class: "steps" }, wo.steps.map((s) => h("li", {}, s))) : null,
    wo.parts.length ? h("div", { class: "hint" }, "Parts: ", wo.parts.map((p) => `${p.quantity} × ${p.part}${p.number ? " (" + p.number + ")" : ""}`).join("; ")) : null,
    wo.notes ? h("div", { class: "notes" }, wo.notes) : null,
    wo.state === "done" ? h("div", { class: "hint" }, `Done ${fmtTime(wo.finished_at)}${wo.verdict ? " · " + wo.verdict.replace("_", " ") : ""}${wo.cause ? " · " + wo.cause : ""}${wo.time_spent_h !== null ? " · " + wo.time_spent_h + " h" : ""}`) : null,
    acts, forms, msg);
}

export async function workOrdersView(view, params) {
  const states = params.getAll("state");
  const chosen = new Set(states.length ? states : ["open", "in_progress"]);
  const list = h("div", { id: "wo-list" }, h("p", { class: "muted" }, "Loading…"));
  const total = h("span", { class: "muted" });
  const chips = h("div", { class: "chips", id: "wo-states" });
  const renderChips = () => chips.replaceChildren(...Object.keys(STATE_WORDS).map((s) => h("button", {
    type: "button", class: "chip", "aria-pressed": chosen.has(s) ? "true" : "false",
    onclick: () => { if (chosen.has(s)) chosen.delete(s); else chosen.add(s); renderChips(); list.replaceChildren(); load(); },
  }, STATE_WORDS[s])));
  renderChips();
  view.replaceChildren(h("h1", {}, "Work orders ", total), h("div", { class: "card no-print" }, chips), h("div", { class: "card" }, list));
  const version = (w) => `${w.updated_at}|${w.overdue}`;
  async function load() {
    const q = new URLSearchParams({ limit: "200" });
    for (const s of chosen) q.append("state", s);
    try {
      const page = await api(`/work-orders?${q}`);
      total.textContent = `(${page.total})`;
      for (const p of list.querySelectorAll(":scope > p")) p.remove();
      patchList(list, page.items, (w) => workOrderCard(w, () => load()), version, () => h("p", { class: "muted" }, "No work orders here."));
      const focus = params.get("id") && list.querySelector(`[data-wo="${CSS.escape(params.get("id"))}"]`);
      if (focus) focus.classList.add("highlight");
    } catch (err) {
      list.replaceChildren(h("p", { class: "error" }, err.message));
    }
  }
  await load();
  let pending = null;
  return live.on((event) => {
    if (event !== "workorders" && event !== "resync") return;
    clearTimeout(pending);
    pending = setTimeout(load, 300);
  });
}
