// A small time-series chart on <canvas>: min/max bands, lines, threshold lines, drag-to-zoom, a tooltip.
// Hand-written so the dashboard needs no third-party script and works offline.

const PAD = { left: 58, right: 12, top: 10, bottom: 26 };

function niceStep(span, target) {
  const raw = span / Math.max(1, target);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  const step = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
  return step * mag;
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
  172800, 604800].map((s) => s * 1000);

function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
  if (spanMs <= 900e3) return `${hm}:${two(d.getSeconds())}`;
  if (spanMs <= 86400e3 * 1.5) return hm;
  return `${d.getDate()}/${d.getMonth() + 1} ${hm}`;
}

export function formatValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
  return Number(v.toPrecision(5)).toString();
}

export class Chart {
  // container: an element to draw in; options: {height, unit, onZoom(t0ms, t1ms)}
  constructor(container, options = {}) {
    this.options = options;
    this.series = [];
    this.lines = [];
    this.x0 = 0;
    this.x1 = 1;
    this.wrap = document.createElement("div");
    this.wrap.className = "chart";
    this.canvas = document.createElement("canvas");
    this.canvas.style.height = `${options.height || 180}px`;
    this.tip = document.createElement("div");
    this.tip.className = "chart-tip";
    this.tip.hidden = true;
    this.wrap.append(this.canvas, this.tip);
    container.append(this.wrap);
    this.drag = null;
    this._bind();
    this._resize = () => this.draw();
    window.addEventListener("resize", this._resize);
  }

  destroy() {
    window.removeEventListener("resize", this._resize);
    this.wrap.remove();
  }

  // series: [{name, t:[ms], y:[], lo?:[], hi?:[], color}], lines: [{y, label, color}], range [x0, x1] in ms
  setData(series, lines, x0, x1) {
    this.series = series;
    this.lines = lines || [];
    this.x0 = x0;
    this.x1 = Math.max(x1, x0 + 1);
    this.draw();
  }

  _yRange() {
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of this.series) {
      for (let i = 0; i < s.t.length; i++) {
        if (s.t[i] < this.x0 || s.t[i] > this.x1) continue;
        const a = s.lo ? s.lo[i] : s.y[i];
        const b = s.hi ? s.hi[i] : s.y[i];
        if (a !== null && a < lo) lo = a;
        if (b !== null && b > hi) hi = b;
      }
    }
    const span = isFinite(lo) ? Math.max(hi - lo, Math.abs(hi) * 0.05, 1e-9) : 0;
    for (const l of this.lines) {
      if (l.scale === false) continue;  // drawn when in view, never stretching the axis to itself
      // "near": an alarm limit stretches the axis to itself when it is within a span of the data, so a value
      // approaching its limit shows the gap; a far one is named in the title instead of flattening the trend
      if (l.scale === "near" && isFinite(lo) && (l.y > hi + span || l.y < lo - span)) continue;
      if (l.y < lo) lo = l.y;
      if (l.y > hi) hi = l.y;
    }
    if (!isFinite(lo)) return [0, 1];
    if (lo === hi) return [lo - 1, hi + 1];
    const m = (hi - lo) * 0.06;
    return [lo - m, hi + m];
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(this.wrap);
    const ink = css.getPropertyValue("--ink").trim() || "#222";
    const grid = css.getPropertyValue("--grid").trim() || "#ddd";
    const [y0, y1] = this._yRange();
    this.yr = [y0, y1];
    const pw = w - PAD.left - PAD.right;
    const ph = h - PAD.top - PAD.bottom;
    const X = (t) => PAD.left + ((t - this.x0) / (this.x1 - this.x0)) * pw;
    const Y = (v) => PAD.top + (1 - (v - y0) / (y1 - y0)) * ph;
    this.X = X;
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = ink;
    g.strokeStyle = grid;
    g.lineWidth = 1;
    // y grid and labels
    const ys = niceStep(y1 - y0, Math.max(2, ph / 40));
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let v = Math.ceil(y0 / ys) * ys; v <= y1; v += ys) {
      const y = Math.round(Y(v)) + 0.5;
      g.beginPath();
      g.moveTo(PAD.left, y);
      g.lineTo(w - PAD.right, y);
      g.stroke();
      g.fillText(formatValue(Number(v.toPrecision(12))), PAD.left - 6, y);
    }
    // x grid and labels
    const span = this.x1 - this.x0;
    const target = span / Math.max(2, pw / 90);
    const xs = TIME_STEPS.find((s) => s >= target) || TIME_STEPS[TIME_STEPS.length - 1];
    const tz = new Date().getTimezoneOffset() * 60e3;
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let t = Math.ceil((this.x0 - tz) / xs) * xs + tz; t <= this.x1; t += xs) {
      const x = Math.round(X(t)) + 0.5;
      g.beginPath();
      g.moveTo(x, PAD.top);
      g.lineTo(x, PAD.top + ph);
      g.stroke();
      g.fillText(timeLabel(t, span), x, PAD.top + ph + 6);
    }
    g.save();
    g.beginPath();
    g.rect(PAD.left, PAD.top, pw, ph);
    g.clip();
    for (const s of this.series) this._drawSeries(g, s, X, Y);
    for (const l of this.lines) {
      if (l.y < y0 || l.y > y1) continue;
      g.strokeStyle = l.color || "#c62828";
      g.setLineDash([6, 4]);
      g.lineWidth = 1.5;
      const y = Y(l.y);
      g.beginPath();
      g.moveTo(PAD.left, y);
      g.lineTo(w - PAD.right, y);
      g.stroke();
      g.setLineDash([]);
      g.fillStyle = l.color || "#c62828";
      g.textAlign = "right";
      // the label above its line, or below it when the line runs along the top
      g.textBaseline = y - PAD.top < 14 ? "top" : "bottom";
      g.fillText(l.label || "", w - PAD.right - 4, y - PAD.top < 14 ? y + 2 : y - 2);
    }
    if (this.drag && this.drag.x1 !== undefined) {
      g.fillStyle = "rgba(25, 118, 210, 0.15)";
      const a = Math.min(this.drag.x0, this.drag.x1);
      g.fillRect(a, PAD.top, Math.abs(this.drag.x1 - this.drag.x0), ph);
    }
    g.restore();
    if (!this.series.some((s) => s.t.length)) {
      g.fillStyle = ink;
      g.textAlign = "center";
      g.textBaseline = "middle";
      g.fillText("no data in this range", PAD.left + pw / 2, PAD.top + ph / 2);
    }
  }

  _drawSeries(g, s, X, Y) {
    const color = s.color || "#1976d2";
    if (s.lo && s.hi) {
      // the band: every bucket from its minimum to its maximum, so no spike is lost
      g.fillStyle = color + "40";
      g.beginPath();
      for (let i = 0; i < s.t.length; i++) g.lineTo(X(s.t[i]), Y(s.hi[i]));
      for (let i = s.t.length - 1; i >= 0; i--) g.lineTo(X(s.t[i]), Y(s.lo[i]));
      g.closePath();
      g.fill();
      g.strokeStyle = color + "90";
      g.lineWidth = 1;
      // each bucket's own min-max bar, so a lone spike inside a wide band still shows
      for (let i = 0; s.bars !== false && i < s.t.length; i++) {
        if (s.hi[i] === s.lo[i]) continue;
        const x = Math.round(X(s.t[i])) + 0.5;
        g.beginPath();
        g.moveTo(x, Y(s.hi[i]));
        g.lineTo(x, Y(s.lo[i]));
        g.stroke();
      }
    }
    g.strokeStyle = color;
    g.lineWidth = 1.6;
    g.beginPath();
    let pen = false;
    for (let i = 0; i < s.t.length; i++) {
      if (s.y[i] === null || s.y[i] === undefined) { pen = false; continue; }
      const x = X(s.t[i]);
      const y = Y(s.y[i]);
      if (pen) g.lineTo(x, y); else g.moveTo(x, y);
      pen = true;
    }
    g.stroke();
    if (s.t.length === 1) {
      g.fillStyle = color;
      g.beginPath();
      g.arc(X(s.t[0]), Y(s.y[0]), 3, 0, Math.PI * 2);
      g.fill();
    }
  }

  _timeAt(px) {
    const pw = this.canvas.clientWidth - PAD.left - PAD.right;
    return this.x0 + ((px - PAD.left) / pw) * (this.x1 - this.x0);
  }

  _bind() {
    const c = this.canvas;
    const local = (e) => e.clientX - c.getBoundingClientRect().left;
    c.addEventListener("pointerdown", (e) => {
      if (!this.options.onZoom) return;
      this.drag = { x0: local(e) };
      c.setPointerCapture(e.pointerId);
    });
    c.addEventListener("pointermove", (e) => {
      const x = local(e);
      if (this.drag) {
        this.drag.x1 = x;
        this.draw();
      }
      this._tooltip(x);
    });
    c.addEventListener("pointerup", (e) => {
      const d = this.drag;
      this.drag = null;
      if (d && d.x1 !== undefined && Math.abs(d.x1 - d.x0) > 8) {
        const a = this._timeAt(Math.min(d.x0, d.x1));
        const b = this._timeAt(Math.max(d.x0, d.x1));
        this.options.onZoom(a, b);
      }
      this.draw();
      c.releasePointerCapture(e.pointerId);
    });
    c.addEventListener("pointerleave", () => { this.tip.hidden = true; });
  }

  _tooltip(x) {
    const t = this._timeAt(x);
    const parts = [];
    for (const s of this.series) {
      if (!s.t.length) continue;
      let best = 0;
      for (let i = 1; i < s.t.length; i++) if (Math.abs(s.t[i] - t) < Math.abs(s.t[best] - t)) best = i;
      let text = `${s.name}: ${formatValue(s.y[best])}`;
      if (s.lo && s.hi && s.lo[best] !== s.hi[best]) text += ` (${formatValue(s.lo[best])} … ${formatValue(s.hi[best])})`;
      parts.push({ t: s.t[best], text });
    }
    if (!parts.length || x < PAD.left) { this.tip.hidden = true; return; }
    this.tip.hidden = false;
    this.tip.textContent = `${new Date(parts[0].t).toLocaleString()} — ${parts.map((p) => p.text).join(", ")}`;
  }
}
