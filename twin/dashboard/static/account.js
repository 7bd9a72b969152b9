// One's own account (#/account): change the password with the current one, see one's sessions and end those
// left open elsewhere (a shared terminal). Signed in with an API key there is no account: the page says so.
import { api, ApiError, fmtTime, h, session, toast, trackDirty } from "./core.js";

function passwordForm(msg) {
  const field = (name, label, auto) => h("input", { name, type: "password", required: true, maxlength: "1024", autocomplete: auto, "aria-label": label });
  const current = field("current", "current password", "current-password");
  const next = field("new", "new password", "new-password");
  const again = field("again", "new password again", "new-password");
  next.minLength = 8;
  const form = trackDirty(h("form", { class: "stack", id: "change-password", onsubmit: async (e) => {
    e.preventDefault();
    msg.textContent = "";
    if (next.value !== again.value) { msg.textContent = "The new password and its repetition differ."; return; }
    try {
      await api("/account/password", { method: "POST", body: { current: current.value, new: next.value } });
      form.reset();
      form.removeAttribute("data-dirty");
      toast("Password changed; your other sessions have ended");
    } catch (err) {
      msg.textContent = err instanceof ApiError && err.status === 403 ? "The current password is wrong." : err.message;
    }
  } },
  h("label", { class: "stack" }, "Current password", current),
  h("label", { class: "stack" }, "New password (8 characters or more)", next),
  h("label", { class: "stack" }, "New password again", again),
  h("button", { class: "btn", type: "submit" }, "Change password")));
  return form;
}

export async function accountView(view) {
  const who = session.who;
  if (!who.session) {
    view.replaceChildren(h("h1", {}, "Account"), h("section", { class: "card" },
      h("p", {}, `You are signed in with the API key ${who.prefix} (${who.role}). Keys have no password; an admin rotates or revokes them under Users and keys.`)));
    return null;
  }
  const msg = h("p", { class: "error", role: "alert" });
  const list = h("ul", { class: "timeline", id: "my-sessions" });
  const reload = async () => {
    const mine = await api("/account/sessions");
    list.replaceChildren(...mine.map((s) => h("li", {}, `${s.prefix} · signed in ${fmtTime(s.created_at)} · used ${fmtTime(s.last_used_at)} `,
      s.current ? h("span", { class: "badge ok" }, "this one") : h("button", { class: "btn small secondary", type: "button", onclick: async () => {
        try { await api(`/account/sessions/${s.prefix}`, { method: "DELETE" }); toast(`Session ${s.prefix} ended`); await reload(); } catch (err) { msg.textContent = err.message; }
      } }, "End"))));
  };
  view.replaceChildren(
    h("h1", {}, `Account · ${who.name}`),
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, "Password"), passwordForm(msg), msg),
      h("section", { class: "card" }, h("h2", {}, "Your sessions"), h("p", { class: "hint" }, `Role: ${who.role}. A session ends when you sign out, after a while unused, or here.`), list)));
  await reload();
  return null;
}
