// The fleet view: a virtualised table (only the rows on screen exist, reused
// as the list scrolls) and an overview canvas with one cell per device.
// Cells are written with textContent, and only when their text changed.

import { ago, fmt, nowS } from "./util.js";

const ROW_H = 24;

function reading(key, digits) {
  return (r) => {
    const last = r.last;
    if (!last) return ["", ""];
    // A failed sensor: its reading is absent (or named in err) this round.
    if (r.fault && (r.fault[key] !== undefined || last[key] === undefined)) return ["err", "err"];
    return [fmt(last[key], digits), ""];
  };
}

const COLUMNS = [
  { title: "state", get: (r) => [r.state === "will" ? "Will" : r.state, "st " + r.state] },
  { title: "device", get: (r) => [r.id, "id"] },
  { title: "since", r: true, get: (r) => [r.since ? ago(nowS() - r.since) : "", ""] },
  { title: "fw", get: (r) => [r.fw ?? "", ""] },
  { title: "boot", r: true, get: (r) => [r.boot ?? "", ""] },
  { title: "reset", get: (r) => [r.state === "offline" && r.reason ? r.reason : (r.reset ?? ""), ""] },
  { title: "ip", get: (r) => [r.ip ?? "", ""] },
  { title: "t °C", r: true, get: reading("t", 1) },
  { title: "h %", r: true, get: reading("h", 1) },
  { title: "p hPa", r: true, get: reading("p", 1) },
  { title: "bat V", r: true, get: reading("bat", 2) },
  { title: "seq", r: true, get: (r) => [r.seq ?? "", ""] },
  { title: "age", r: true, get: (r) => [r.lastRx ? ago((Date.now() - r.lastRx) / 1000) : "", ""] },
  { title: "lost", r: true, get: (r) => [r.lost || "", r.lost ? "bad" : ""] },
  { title: "recon", r: true, get: (r) => [r.reconnects || "", ""] },
  { title: "Wills", r: true, get: (r) => [r.wills || "", r.wills ? "bad" : ""] },
];

export class FleetTable {
  constructor(store, { onSelect }) {
    this.store = store;
    this.onSelect = onSelect;
    this.view = [];         // records shown, in order
    this.selected = null;
    this.scroller = document.getElementById("rows");
    this.spacer = document.getElementById("spacer");
    this.empty = document.getElementById("empty");
    this.pool = [];
    const head = document.getElementById("head");
    for (const c of COLUMNS) {
      const s = document.createElement("span");
      s.textContent = c.title;
      if (c.r) s.className = "r";
      head.appendChild(s);
    }
    this.scroller.addEventListener("scroll", () => this.requestRender(), { passive: true });
    this.scroller.addEventListener("click", (ev) => {
      const row = ev.target.closest(".row");
      if (row && row.dataset.index !== undefined) {
        const r = this.view[Number(row.dataset.index)];
        if (r) this.onSelect(r.id);
      }
    });
    new ResizeObserver(() => this.requestRender()).observe(this.scroller);
    this.requestRender = () => { this.needRender = true; };
  }

  setView(records) {
    this.view = records;
    this.spacer.style.height = `${records.length * ROW_H}px`;
    this.empty.hidden = records.length > 0;
    this.needRender = true;
  }

  ensureRows(n) {
    while (this.pool.length < n) {
      const row = document.createElement("div");
      row.className = "row";
      row.cells = [];
      row.texts = [];
      row.classes = [];
      for (const c of COLUMNS) {
        const s = document.createElement("span");
        if (c.r) s.className = "r";
        row.appendChild(s);
        row.cells.push(s);
        row.texts.push(null);
        row.classes.push(null);
      }
      row.key = null;
      this.scroller.appendChild(row);
      this.pool.push(row);
    }
  }

  // Draw the rows in view. `all`: refresh every visible cell (ages tick).
  render() {
    this.needRender = false;
    const gutter = this.scroller.offsetWidth - this.scroller.clientWidth;
    if (gutter !== this.gutter) {
      this.gutter = gutter;
      document.getElementById("head").style.paddingRight = `${10 + gutter}px`;
    }
    const h = this.scroller.clientHeight || 600;
    const top = this.scroller.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW_H) - 2);
    const count = Math.ceil(h / ROW_H) + 5;
    this.ensureRows(count);
    for (let i = 0; i < this.pool.length; i++) {
      const row = this.pool[i];
      const idx = first + i;
      const r = i < count ? this.view[idx] : undefined;
      if (!r) {
        if (row.style.display !== "none") row.style.display = "none";
        continue;
      }
      if (row.style.display === "none") row.style.display = "";
      if (row.dataset.index !== String(idx)) {
        row.dataset.index = String(idx);
        row.style.transform = `translateY(${idx * ROW_H}px)`;
      }
      const sel = r.id === this.selected;
      if (row.classList.contains("sel") !== sel) row.classList.toggle("sel", sel);
      for (let c = 0; c < COLUMNS.length; c++) {
        const [text, cls] = COLUMNS[c].get(r);
        const t = String(text);
        if (row.texts[c] !== t) { row.cells[c].textContent = t; row.texts[c] = t; }
        const k = (COLUMNS[c].r ? "r " : "") + cls;
        if (row.classes[c] !== k) { row.cells[c].className = k; row.classes[c] = k; }
      }
      if (r.fault) {
        const why = Object.entries(r.fault).map(([k, v]) => `${k}: ${v}`).join(", ");
        if (row.title !== why) row.title = why;
      } else if (row.title) row.title = "";
    }
  }

  scrollTo(id) {
    const i = this.view.findIndex((r) => r.id === id);
    if (i < 0) return;
    const top = i * ROW_H, h = this.scroller.clientHeight;
    if (top < this.scroller.scrollTop || top + ROW_H > this.scroller.scrollTop + h) {
      this.scroller.scrollTop = Math.max(0, top - h / 2);
    }
    this.needRender = true;
  }
}

const COLORS = { online: "#3fb950", offline: "#5c656f", will: "#f85149", unknown: "#6e5aa8" };

// One cell per device, in id order, colour = state; amber = sensor fault;
// dimmed = filtered out. Click opens the device.
export class Overview {
  constructor(store, { onSelect }) {
    this.store = store;
    this.canvas = document.getElementById("overview");
    this.ctx = this.canvas.getContext("2d");
    this.layout = null;
    this.shown = null;
    this.canvas.addEventListener("click", (ev) => {
      const L = this.layout;
      if (!L) return;
      const rect = this.canvas.getBoundingClientRect();
      const col = Math.floor((ev.clientX - rect.left) / L.cell);
      const row = Math.floor((ev.clientY - rect.top) / L.cell);
      const i = row * L.cols + col;
      if (col < L.cols && i < this.store.order.length) onSelect(this.store.order[i]);
    });
    new ResizeObserver(() => { this.dirty = true; }).observe(this.canvas);
    this.dirty = true;
  }

  draw(shown) {
    this.dirty = false;
    const order = this.store.order;
    const w = this.canvas.clientWidth, hMax = 56;
    const n = Math.max(order.length, 1);
    let cell = 12;
    while (cell > 2 && Math.ceil(n / Math.floor(w / cell)) * cell > hMax) cell--;
    const cols = Math.max(1, Math.floor(w / cell));
    const rows = Math.ceil(n / cols);
    const h = Math.max(cell, Math.min(hMax, rows * cell));
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
      this.canvas.style.height = `${h}px`;
    }
    this.layout = { cell, cols };
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const gap = cell > 4 ? 1 : 0;
    // Group by colour: one fillStyle change per colour, not per cell.
    for (const pass of ["unknown", "offline", "online", "will", "fault"]) {
      for (const dim of [false, true]) {
        ctx.fillStyle = pass === "fault" ? "#d29922" : COLORS[pass];
        ctx.globalAlpha = dim ? 0.18 : 1;
        for (let i = 0; i < order.length; i++) {
          const r = this.store.devices.get(order[i]);
          const kind = r.fault && r.state === "online" ? "fault" : r.state;
          if (kind !== pass) continue;
          if ((shown !== null && !shown.has(r.id)) !== dim) continue;
          ctx.fillRect((i % cols) * cell, Math.floor(i / cols) * cell, cell - gap, cell - gap);
        }
      }
    }
    ctx.globalAlpha = 1;
  }
}
