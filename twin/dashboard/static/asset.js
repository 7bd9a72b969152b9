// One asset: live values, trends of its key signals with their alarm limits (server-downsampled, drag to zoom),
// diagnoses over time (edge and platform apart), what its models are still learning, alerts, advice, logbook.
import { alertCard, alertVersion } from "./alerts.js";
import { Chart, formatValue } from "./chart.js";
import { setpointCard } from "./setpoint.js";
import { ago, api, download, fmtTime, h, live, patchList, toast } from "./core.js";

const RANGES = [["15 min", 15 * 60e3], ["1 h", 3600e3], ["6 h", 6 * 3600e3], ["24 h", 86400e3], ["7 d", 7 * 86400e3]];
const COLORS = ["#1976d2", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#ad1457"];
const LIMIT_COLORS = { HIHI: "#c62828", HI: "#ef6c00", LO: "#ef6c00", LOLO: "#c62828" };
const SOURCE_WORDS = { edge: "edge model", platform: "platform model (teacher)" };
export const STALE_MS = 30e3;  // no new value for this long: the asset's data is stale

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const isDiag = (p) => p.name.startsWith("diag.");
const numeric = (p) => ["float", "int", "bool"].includes(p.dtype);

export async function assetView(view, params, nodeId) {
  const state = await api(`/nodes/${encodeURIComponent(nodeId)}`);
  const atype = state.node.type ? await api(`/asset-types/${encodeURIComponent(state.node.type)}`).catch(() => null) : null;
  const props = state.properties.filter((p) => !isDiag(p) && !p.retired_at);
  const trendable = props.filter(numeric);
  const chosen = new Set((params.get("props") || "").split(",").filter((n) => trendable.some((p) => p.name === n)));
  // the site model's key signals first; without them, the properties that have a range and a unit
  const key = ((atype && atype.key_signals) || []).filter((n) => trendable.some((p) => p.name === n));
  const rank = (p) => (p.range_high !== null ? 2 : 0) + (p.unit ? 1 : 0);
  if (!chosen.size) (key.length ? key : [...trendable].sort((a, b) => rank(b) - rank(a)).slice(0, 2).map((p) => p.name)).forEach((n) => chosen.add(n));
  const limits = (atype && atype.limits) || {};
  let rangeMs = Number(params.get("range")) || 3600e3;
  let zoom = null;  // [t0, t1] ms while zoomed in; null follows now
  const charts = new Map();
  const latest = new Map(props.map((p) => [p.name, p]));

  const stale = h("div", { class: "banner stale", id: "stale", role: "status", hidden: true });
  const learning = h("div", { class: "banner info", id: "learning", role: "status", hidden: true });
  const healthBadge = h("span", { class: "badge unknown", id: "asset-health" }, "…");
  const reasons = h("div", { class: "hint" });
  const tbody = h("tbody", { id: "values" });
  const chips = h("div", { class: "chips", id: "trend-props" });
  const rangeRow = h("div", { class: "row", id: "trend-range" });
  const chartBox = h("div", { id: "charts" });
  const diagBox = h("div", { id: "diagnoses" });
  const openBox = h("div", { id: "open-alerts" });
  const pastBox = h("div", { id: "past-alerts" });
  const logBox = h("div", { id: "logbook", class: "scroll" });
  const logMsg = h("span", { class: "error", role: "alert" });
  const n = state.node;
  view.replaceChildren(
    h("div", { class: "hint" }, h("a", { href: "#/" }, "Plant"), ` ${n.path}`),
    h("h1", {}, `${n.name} `, healthBadge, h("span", { class: "kind muted" }, ` ${n.kind}${n.type ? " · " + n.type : ""} · criticality ${n.criticality}`)),
    reasons, stale, learning,
    h("section", { class: "card" }, h("h2", {}, "Trends"), chips, rangeRow, chartBox),
    h("section", { class: "card" }, h("h2", {}, "Open alerts and advice"), openBox),
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, "Live values"),
        h("div", { class: "scroll" }, h("table", { class: "values" }, h("thead", {}, h("tr", {}, ["Property", "Value", "Unit", "Quality", "Updated"].map((t) => h("th", {}, t)))), tbody))),
      h("section", { class: "card" }, h("h2", {}, "Diagnoses"), diagBox)),
    ...(atype && atype.writable ? [setpointCard(nodeId, atype.writable)].filter(Boolean) : []),
    h("section", { class: "card" }, h("div", { class: "row" }, h("h2", {}, "Logbook"), h("span", { class: "spacer" }),
      h("button", { class: "btn small secondary", type: "button", id: "logbook-csv", onclick: async () => {
        try { toast(`Saved ${await download(`/logbook.csv?node=${encodeURIComponent(nodeId)}`, "logbook.csv")}`); } catch (err) { logMsg.textContent = err.message; }
      } }, "Export CSV")), logMsg, logBox),
    h("section", { class: "card" }, h("h2", {}, "Past alerts"), pastBox));

  // ---- live values
  function valueRow(p) {
    const age = p.ts ? live.now() - Date.parse(p.ts) : null;
    return h("tr", { "data-prop": p.name, class: age !== null && age > STALE_MS ? "stale" : "" },
      h("td", {}, p.name, p.description ? h("div", { class: "hint" }, p.description) : null),
      h("td", { class: "num value", "data-value": "" }, p.value === null ? "—" : formatValue(p.value)),
      h("td", {}, p.unit),
      h("td", {}, p.quality ? h("span", { class: `badge ${p.quality}` }, p.quality) : "—",
        p.flags && p.flags.length ? h("div", { class: "hint" }, p.flags.join(", ")) : null),
      h("td", { class: "hint", "data-age": "", title: p.ts ? fmtTime(p.ts) : "" }, ago(age)));
  }
  tbody.replaceChildren(...(props.length ? props.map(valueRow) : [h("tr", {}, h("td", { colspan: "5", class: "muted" }, "This node has no measured properties; see its parts in the plant tree."))]));

  function checkStale() {
    const stamps = [...latest.values()].map((p) => (p.ts ? Date.parse(p.ts) : 0));
    const newest = stamps.length ? Math.max(...stamps) : 0;
    const age = newest ? live.now() - newest : Infinity;
    stale.hidden = age <= STALE_MS || !props.length;  // a node without properties has nothing to go stale
    stale.textContent = newest ? `Data is stale: no new value since ${fmtTime(newest)} (${ago(age)}).` : "No values have arrived for this asset yet.";
    for (const row of tbody.rows) {
      const p = latest.get(row.dataset.prop);
      if (!p) continue;
      const a = p && p.ts ? live.now() - Date.parse(p.ts) : null;
      row.querySelector("[data-age]").textContent = ago(a);
      row.classList.toggle("stale", a !== null && a > STALE_MS);
    }
  }
  checkStale();

  // ---- trends
  function renderControls() {
    chips.replaceChildren(...trendable.map((p) => h("button", {
      type: "button", class: "chip", "aria-pressed": chosen.has(p.name) ? "true" : "false",
      onclick: () => { if (chosen.has(p.name)) chosen.delete(p.name); else chosen.add(p.name); renderControls(); loadTrends(); },
    }, p.name)));
    rangeRow.replaceChildren(
      h("span", { class: "hint" }, "Range:"),
      ...RANGES.map(([label, ms]) => h("button", {
        type: "button", class: "chip", "aria-pressed": !zoom && ms === rangeMs ? "true" : "false",
        onclick: () => { rangeMs = ms; zoom = null; renderControls(); loadTrends(); loadDiagnoses(); },
      }, label)),
      ...(zoom ? [h("button", { type: "button", class: "btn small secondary", id: "reset-zoom", onclick: () => { zoom = null; renderControls(); loadTrends(); } }, "Reset zoom")] : []),
      h("span", { class: "hint" }, zoom ? `${fmtTime(zoom[0])} – ${fmtTime(zoom[1])}` : "drag across a chart to zoom"));
  }

  function window_() {
    if (zoom) return zoom;
    const end = live.now();
    return [end - rangeMs, end];
  }

  async function loadTrends() {
    const [t0, t1] = window_();
    for (const [name, c] of charts) if (!chosen.has(name)) { c.chart.destroy(); c.title.remove(); charts.delete(name); }
    const points = Math.min(2000, Math.max(200, Math.round(chartBox.clientWidth || 800)));
    await Promise.all([...chosen].map(async (name, i) => {
      let c = charts.get(name);
      if (!c) {
        const title = h("div", { class: "chart-title" });
        chartBox.append(title);
        c = { title, chart: new Chart(chartBox, { height: 170, onZoom: (a, b) => { zoom = [a, b]; renderControls(); loadTrends(); } }), color: COLORS[i % COLORS.length] };
        charts.set(name, c);
      }
      const q = new URLSearchParams({ prop: name, start: new Date(t0).toISOString(), end: new Date(t1).toISOString(), points: String(points) });
      try {
        const d = await api(`/dashboard/nodes/${encodeURIComponent(nodeId)}/trend?${q}`);
        c.data = { t: d.ts, y: d.mean, lo: d.raw ? null : d.min, hi: d.raw ? null : d.max };
        c.raw = d.raw;
        const own = limits[name] || [];
        const unit = d.unit ? ` ${d.unit}` : "";
        const named = own.length ? ` — limits ${own.map((l) => `${l.name} ${formatValue(l.value)}${unit}`).join(", ")}` : "";
        c.suffix = named;
        c.title.textContent = `${name}${d.unit ? " [" + d.unit + "]" : ""} — ${d.raw ? plural(d.ts.length, "point") : `${d.ts.length} buckets of ${formatValue(d.bucket_s)} s, min/max shaded`}${named}`;
        const lines = own.map((l) => ({ y: l.value, label: `${l.name} ${formatValue(l.value)}${unit}`, color: LIMIT_COLORS[l.name], scale: "near" }));
        if (d.range_high !== null) lines.push({ y: d.range_high, label: "range high", color: "#8a949e", scale: false });
        if (d.range_low !== null) lines.push({ y: d.range_low, label: "range low", color: "#8a949e", scale: false });
        c.lines = lines;
        // following now, the axis starts where the data does (a machine seen for ten minutes is not a sliver)
        c.x0 = zoom || !d.ts.length ? t0 : Math.max(t0, Math.min(d.ts[0], t1 - 2 * 60e3));
        c.chart.setData([{ name, color: c.color, ...c.data }], lines, c.x0, t1);
      } catch (err) {
        c.title.textContent = `${name}: ${err.message}`;
      }
    }));
  }

  function appendLive(p) {
    const c = charts.get(p.name);
    if (!c || !c.data || zoom || typeof p.value !== "number" && typeof p.value !== "boolean") return;
    const t = Date.parse(p.ts);
    if (c.data.t.length && t <= c.data.t[c.data.t.length - 1]) return;
    const v = Number(p.value);
    c.data.t.push(t); c.data.y.push(v);
    if (c.data.lo) { c.data.lo.push(v); c.data.hi.push(v); }
    if (c.raw) c.title.textContent = `${p.name}${p.unit ? " [" + p.unit + "]" : ""} — ${plural(c.data.t.length, "point")}${c.suffix || ""}`;
    const [t0, t1] = window_();
    c.chart.setData([{ name: p.name, color: c.color, ...c.data }], c.lines, Math.max(t0, c.x0 || t0), Math.max(t1, t));
  }

  // ---- diagnoses
  let diagCharts = [];
  function diagChart() {
    const c = new Chart(diagBox, { height: 150 });
    diagCharts.push(c);
    return c;
  }
  async function loadDiagnoses() {
    const [t0, t1] = zoom || [live.now() - Math.max(rangeMs, 86400e3), live.now()];
    const q = new URLSearchParams({ start: new Date(t0).toISOString(), end: new Date(t1).toISOString() });
    const d = await api(`/dashboard/nodes/${encodeURIComponent(nodeId)}/diagnoses?${q}`).catch((err) => ({ tasks: {}, error: err.message }));
    const parts = [];
    let learnt = null;
    for (const latestD of state.diagnoses) {
      const p = latestD.payload;
      if (p.learning !== undefined && p.learning !== null) { learnt = latestD; continue; }
      const text = latestD.task === "rul" ? `RUL ${formatValue(p.rul)} ${p.unit || ""} (${formatValue(p.rul_low)} – ${formatValue(p.rul_high)})`
        : latestD.task === "anomaly" ? `score ${formatValue(p.score)} / threshold ${formatValue(p.threshold)}`
          : `${p.label} (${Math.round((p.probability || 0) * 100)}%)`;
      parts.push(h("div", {}, h("strong", {}, latestD.task), ` ${text} — ${latestD.model} ${latestD.version}, ${latestD.source}, ${fmtTime(latestD.ts)}`));
    }
    showLearning(learnt);
    for (const c of diagCharts) c.destroy();
    diagCharts = [];
    const models = (atype && atype.models) || [];
    const none = learnt ? `No verdict yet: the ${learnt.task} model is still learning (see above).`
      : models.length ? `No diagnoses yet: the ${models.join(" and ")} model${models.length > 1 ? "s judge" : " judges"} a window of data at a time, once enough has come.`
        : "No diagnoses for this asset.";
    diagBox.replaceChildren(...(parts.length ? parts : [h("p", { class: "muted" }, d.error || none)]));
    // the charts span the diagnoses found, so an hour of them is not a sliver at the end of a day
    const firstTs = Math.min(...Object.values(d.tasks).map((xs) => (xs.length ? xs[0].ts : t1)));
    const x0 = Math.max(t0, Math.min(firstTs, t1 - 60e3));
    // edge and platform scores are on different scales (each model its own threshold): one chart each
    const scored = (d.tasks.anomaly || []).filter((x) => x.score !== undefined && x.score !== null);
    for (const source of ["edge", "platform"]) {
      const an = scored.filter((x) => (x.source === "platform") === (source === "platform"));
      if (!an.length) continue;
      const thr = an[an.length - 1].threshold;
      diagBox.append(h("div", { class: "chart-title", "data-source": source }, `Anomaly score, ${SOURCE_WORDS[source]}${thr === null || thr === undefined ? "" : `, threshold ${formatValue(thr)}`}`));
      diagChart().setData([{ name: `${source} score`, color: source === "edge" ? "#6a1b9a" : "#00838f", t: an.map((x) => x.ts), y: an.map((x) => x.score) }],
        thr === null || thr === undefined ? [] : [{ y: thr, label: `threshold ${formatValue(thr)}` }], x0, t1);
    }
    const rul = d.tasks.rul;
    if (rul && rul.length) {
      diagBox.append(h("div", { class: "chart-title" }, `Remaining useful life${rul[0].unit ? " [" + rul[0].unit + "]" : ""}, with its interval`));
      diagChart().setData([{
        name: "RUL", color: "#00838f", bars: false, t: rul.map((x) => x.ts), y: rul.map((x) => x.rul),
        lo: rul.map((x) => x.rul_low ?? x.rul), hi: rul.map((x) => x.rul_high ?? x.rul),
      }], [], x0, t1);
    }
    const faults = d.tasks.faults;
    if (faults && faults.length) {
      const recent = faults.slice(-8).reverse();
      diagBox.append(h("div", { class: "chart-title" }, "Fault diagnoses (newest first)"),
        h("table", {}, h("tbody", {}, recent.map((f) => h("tr", {}, h("td", {}, fmtTime(f.ts)), h("td", {}, f.label), h("td", { class: "num" }, `${Math.round((f.probability || 0) * 100)}%`))))));
    }
  }

  // ---- what a model is still learning about this asset
  function showLearning(d) {
    learning.hidden = !d;
    if (!d) return;
    const p = d.payload;
    const when = p.ready_at ? ` First verdicts about ${fmtTime(Math.round(p.ready_at / 1000))}, if it keeps running normally.` : "";
    learning.textContent = `The ${d.task} model is learning this machine's normal operation: ${Math.round(p.learning * 100)} % of the healthy data it needs.${when}`;
  }

  // ---- alerts
  async function loadAlerts() {
    const sub = encodeURIComponent(nodeId);
    const [open, past] = await Promise.all([api(`/alerts?subtree=${sub}&open=true&limit=50`), api(`/alerts?subtree=${sub}&state=normal&limit=20`)]);
    const changed = () => { loadAlerts(); loadHealth(); loadLogbook(); };
    patchList(openBox, open.items, (a) => alertCard(a, changed), alertVersion, () => h("p", { class: "muted" }, "No open alerts."));
    patchList(pastBox, past.items, (a) => alertCard(a, changed, { advice: false }), alertVersion, () => h("p", { class: "muted" }, "No past alerts."));
  }

  // ---- logbook: work orders, alerts and model versions of this asset and its parts
  async function loadLogbook() {
    try {
      const book = await api(`/logbook?node=${encodeURIComponent(nodeId)}&limit=50`);
      logBox.replaceChildren(book.items.length ? h("table", { class: "logbook stack-narrow" },
        h("thead", {}, h("tr", {}, ["When", "What", "Details", "Who"].map((t) => h("th", {}, t)))),
        h("tbody", {}, book.items.map((e) => h("tr", { "data-source": e.source, "data-kind": e.kind },
          h("td", { class: "nowrap", "data-label": "When" }, fmtTime(e.at)), h("td", { "data-label": "What" }, e.title),
          h("td", { "data-label": "Details" }, e.detail), h("td", { "data-label": "Who" }, e.actor)))))
        : h("p", { class: "muted" }, "Nothing in the logbook for the last 30 days."));
    } catch (err) {
      logBox.replaceChildren(h("p", { class: "error" }, err.message));
    }
  }

  async function loadHealth() {
    const hl = (await api("/dashboard/health")).nodes[nodeId];
    if (!hl) return;
    healthBadge.className = `badge ${hl.level}`;
    healthBadge.textContent = { ok: "healthy", warning: "warning", alarm: "alarm", unknown: "no data" }[hl.level];
    reasons.textContent = hl.reasons.join(" · ");
  }

  renderControls();
  await Promise.all([loadTrends(), loadDiagnoses(), loadAlerts().catch((err) => openBox.replaceChildren(h("p", { class: "error" }, err.message))), loadHealth(), loadLogbook()]);

  let diagPending = null;
  let healthAt = Date.now();
  return live.on((event, data) => {
    if (event === "tick") { checkStale(); return; }
    if (event === "alerts" && data.some((a) => a.node === nodeId || a.node.startsWith(nodeId))) { loadAlerts(); loadHealth(); loadLogbook(); }
    if (event === "workorders" && data.some((w) => w.node === nodeId || w.node.startsWith(nodeId))) loadLogbook();
    if (event !== "values") return;
    let diagChanged = false;
    for (const p of data) {
      if (p.node_id !== nodeId) continue;
      if (isDiag(p)) { diagChanged = true; continue; }
      latest.set(p.name, p);
      const row = tbody.querySelector(`tr[data-prop="${CSS.escape(p.name)}"]`);
      if (row) {
        const fresh = valueRow(p);
        fresh.classList.add("flash");
        row.replaceWith(fresh);
      }
      appendLive(p);
    }
    // health follows values: at once while it still says "no data", else every 10 s at most
    if (healthBadge.classList.contains("unknown") ? Date.now() - healthAt > 1000 : Date.now() - healthAt > 10000) {
      healthAt = Date.now();
      loadHealth();
    }
    if (diagChanged && !diagPending) {
      diagPending = setTimeout(async () => {
        diagPending = null;
        state.diagnoses = (await api(`/nodes/${encodeURIComponent(nodeId)}`)).diagnoses;
        loadDiagnoses();
        loadHealth();
      }, 5000);
    }
    checkStale();
  });
}
