// The plant tree: every node with its health (worst of its subtree), open alerts, and a search box.
import { alarmRateLine, fillSites, siteSelect } from "./alerts.js";
import { api, h, live } from "./core.js";

const ASSET_KINDS = new Set(["machine", "component"]);
const SUMMARY_WORDS = { alarm: "in alarm", warning: "with warnings", ok: "healthy", unknown: "without data" };
const LEVEL_WORDS = { ok: "healthy", warning: "warning", alarm: "alarm", unknown: "no data" };

function matches(node, q) {
  return !q || [node.id, node.name, node.type || "", node.kind].some((s) => s.toLowerCase().includes(q));
}

// The tree filtered by `q`: a node stays when it or a descendant matches.
function filterTree(nodes, q) {
  const out = [];
  for (const n of nodes) {
    const children = filterTree(n.children, q);
    if (matches(n, q) || children.length) out.push({ ...n, children });
  }
  return out;
}

function nodeRow(node, health) {
  const hl = health[node.id] || { level: "unknown", own: "unknown", reasons: [], open_alerts: 0 };
  const label = ASSET_KINDS.has(node.kind)
    ? h("a", { href: `#/asset/${encodeURIComponent(node.id)}`, class: "name" }, node.name)
    : h("strong", { class: "name" }, node.name);
  return h("li", { "data-node": node.id },
    h("div", { class: "node" },
      h("span", { class: `dot ${hl.level}`, title: LEVEL_WORDS[hl.level], "aria-label": LEVEL_WORDS[hl.level], "data-health": hl.level }),
      label,
      h("span", { class: "kind" }, `${node.kind}${node.type ? " · " + node.type : ""}`),
      hl.open_alerts ? h("a", { class: "badge alarm", href: `#/alerts?subtree=${encodeURIComponent(node.id)}` }, `${hl.open_alerts} open`) : null,
      hl.reasons.length ? h("span", { class: "reasons" }, hl.reasons.slice(0, 2).join(" · ")) : null),
    node.children.length ? h("ul", {}, node.children.map((c) => nodeRow(c, health))) : null);
}

export async function plantView(view, params) {
  const search = h("input", {
    type: "search", class: "search", placeholder: "Search assets by name, id or type", value: params.get("q") || "",
    "aria-label": "search assets", id: "search",
  });
  const site = siteSelect(params.get("site") || "");
  const tree = h("ul", { class: "tree", id: "tree" });
  const summary = h("div", { class: "row", id: "summary" });
  const rate = h("div", { class: "row", id: "alarm-rate" });
  view.replaceChildren(h("h1", {}, "Plant"), h("div", { class: "card" }, h("div", { class: "row" }, search, site, summary), rate, tree));
  let forest = [];
  let health = {};

  function render() {
    const q = search.value.trim().toLowerCase();
    const shown = filterTree(site.value ? forest.filter((n) => n.id === site.value) : forest, q);
    tree.replaceChildren(...(shown.length ? shown.map((n) => nodeRow(n, health)) : [h("li", { class: "muted" }, "No asset matches.")]));
    // the summary counts machines, the units maintenance works on
    const counts = { alarm: 0, warning: 0, ok: 0, unknown: 0 };
    const walk = (nodes) => nodes.forEach((n) => {
      if (n.kind === "machine") { const l = (health[n.id] || { level: "unknown" }).level; counts[l] = (counts[l] || 0) + 1; }
      walk(n.children);
    });
    walk(site.value ? forest.filter((n) => n.id === site.value) : forest);
    summary.replaceChildren(...["alarm", "warning", "ok", "unknown"].map((l) =>
      h("span", { class: `badge ${l}` }, `${counts[l]} ${SUMMARY_WORDS[l]}`)));
  }

  async function load() {
    const [nodes, hl] = await Promise.all([api("/nodes"), api("/dashboard/health")]);
    forest = nodes.items;
    health = hl.nodes;
    if (site.options.length === 1) await fillSites(site, forest);
    render();
    alarmRateLine(rate);
  }

  function remember() {
    const q = new URLSearchParams();
    if (search.value) q.set("q", search.value);
    if (site.value) q.set("site", site.value);
    history.replaceState(null, "", q.toString() ? `#/?${q}` : "#/");
    render();
  }
  search.addEventListener("input", remember);
  site.addEventListener("change", remember);
  await load();
  let pending = null;
  let last = Date.now();
  return live.on((event, data) => {
    // alerts change health at once; values (diagnoses among them) at most every 10 s
    // a node still without data that now has some turns from grey at once
    const news = event === "values" && data.some((v) => (health[v.node_id] || {}).own === "unknown");
    if (event === "alerts" || (event === "values" && Date.now() - last > (news ? 1000 : 10000))) {
      last = Date.now();
      clearTimeout(pending);
      pending = setTimeout(() => load().catch(() => {}), 300);
    }
  });
}
