// Setpoints of one asset: desired against reported, and a write with a confirmation step that says what will
// happen (from → to, limits, expiry), asks why, and then follows the command until the machine answers.
import { ApiError, api, can, fmtTime, h, qty, toast } from "./core.js";

const FINAL = ["applied", "rejected", "failed", "expired"];
const STATE_WORDS = {
  awaiting_confirmation: "waiting for a second person",
  pending: "waiting to be sent", sent: "sent to the gateway",
  applied: "applied and read back", rejected: "refused by the gateway", failed: "failed at the machine",
  expired: "expired, not applied",
};

export function setpointCard(nodeId, writable) {
  const names = Object.keys(writable || {});
  if (!names.length) return null;
  const rows = h("div", { id: "setpoints" });
  const card = h("section", { class: "card" }, h("h2", {}, "Setpoints"), rows);
  const path = (p) => `/nodes/${encodeURIComponent(nodeId)}/properties/${encodeURIComponent(p)}/desired`;
  let timer = null;

  async function refresh() {
    const states = await Promise.all(names.map((p) => api(path(p)).catch(() => null)));
    if (!card.isConnected && timer) return;
    if (rows.querySelector("[data-confirming]")) return;  // a person is deciding: leave it alone
    rows.replaceChildren(...names.map((p, i) => row(p, writable[p], states[i])));
    const open = states.some((s) => s && s.command && !FINAL.includes(s.command.state));
    clearTimeout(timer);
    timer = setTimeout(refresh, open ? 1000 : 5000);
  }

  function row(prop, w, st) {
    const cmd = st && st.command;
    const msg = h("span", { class: "error", role: "alert" });
    const input = h("input", { type: "number", step: "any", min: String(w.limits[0]), max: String(w.limits[1]),
      "aria-label": `new ${prop}`, "data-setpoint-input": prop, value: st && st.desired !== null ? String(st.desired) : "" });
    const allowed = can(w.role);
    const write = h("button", { type: "button", class: "btn small", "data-action": "write", disabled: !allowed,
      title: allowed ? `write ${prop}` : `needs the ${w.role} role`,
      onclick: () => confirmStep(prop, w, st, Number(input.value), input.value, msg, box) }, "Write…");
    const box = h("div", { class: "setpoint", "data-setpoint": prop },
      h("div", { class: "row" }, h("strong", {}, prop),
        h("span", { class: "hint" }, ` limits ${qty(w.limits[0], w.unit)} – ${qty(w.limits[1], w.unit)}`,
          w.max_rate ? `, at most ${qty(w.max_rate, w.unit)}/s` : "", w.two_person ? ", two people" : "")),
      h("div", { class: "row" },
        h("span", {}, "Desired ", h("b", { "data-desired": "" }, qty(st ? st.desired : null, w.unit))),
        h("span", {}, " · Reported ", h("b", { "data-reported": "" }, qty(st ? st.reported : null, w.unit))),
        h("span", { class: st && st.in_sync ? "badge good" : "badge uncertain", "data-sync": "" },
          st && st.in_sync ? "in agreement" : "not yet reported")),
      cmd ? h("div", { class: "hint", "data-command-state": cmd.state },
        `Last command: ${qty(cmd.value, w.unit)} by ${cmd.actor}, ${STATE_WORDS[cmd.state] || cmd.state}`,
        cmd.outcome ? ` (${cmd.outcome}${cmd.detail ? ": " + cmd.detail : ""})` : "",
        ` · ${fmtTime(cmd.created_at)}`,
        cmd.state === "awaiting_confirmation"
          ? h("button", { type: "button", class: "btn small secondary", "data-action": "confirm-second", disabled: !can(w.role),
            onclick: async () => {
              try { await api(`/commands/${cmd.id}/confirm`, { method: "POST" }); toast("Confirmed: the command is sent"); refresh(); }
              catch (err) { msg.textContent = err.message; }
            } }, "Confirm as second person") : null) : null,
      h("div", { class: "row" }, input, write), msg);
    return box;
  }

  function confirmStep(prop, w, st, value, raw, msg, box) {
    msg.textContent = "";
    if (raw.trim() === "" || !Number.isFinite(value)) { msg.textContent = "Enter a number."; return; }
    if (value < w.limits[0] || value > w.limits[1]) {
      msg.textContent = `${qty(value, w.unit)} is outside the limits ${qty(w.limits[0], w.unit)} – ${qty(w.limits[1], w.unit)}.`;
      return;
    }
    const reason = h("input", { type: "text", maxlength: "2000", "aria-label": "reason", placeholder: "why (goes into the logbook)" });
    const panel = h("div", { class: "confirm", role: "dialog", "aria-label": `confirm ${prop}`, "data-confirming": "" },
      h("p", {}, `Write ${prop} on ${nodeId}: from ${qty(st ? st.reported : null, w.unit)} to `, h("b", {}, qty(value, w.unit)), "?"),
      h("p", { class: "hint" }, `The gateway writes it to the machine and reads it back. If it cannot within ${w.expiry_s} s, it is not applied.`,
        w.two_person ? " A second person must confirm before it is sent." : ""),
      reason,
      h("div", { class: "row" },
        h("button", { type: "button", class: "btn small danger", "data-action": "confirm-write", onclick: async (ev) => {
          ev.target.disabled = true;
          try {
            const cmd = await api(path(prop), { method: "POST", body: { value, reason: reason.value } });
            toast(`${prop} → ${qty(value, w.unit)}: ${STATE_WORDS[cmd.state] || cmd.state}`);
            panel.remove();
            refresh();
          } catch (err) {
            ev.target.disabled = false;
            msg.textContent = err instanceof ApiError ? err.message : String(err);
          }
        } }, "Confirm write"),
        h("button", { type: "button", class: "btn small secondary", onclick: () => { panel.remove(); refresh(); } }, "Cancel")));
    box.append(panel);
    reason.focus();
  }

  refresh();
  return card;
}
