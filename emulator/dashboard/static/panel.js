// The device panel: facts, sensor faults, command buttons with result and
// round trip, live uPlot charts of the readings, the presence timeline.
// Every device string goes into the DOM through textContent.

import uPlot from "./vendor/uPlot.esm.js";
import { el, ago, clock, brief, nowS } from "./util.js";

const MAX_POINTS = 720;
const GROUPS = [
  { title: "Temperature °C", keys: ["t", "mcu"], labels: ["air", "MCU"], colors: ["#ff9f43", "#a78bfa"] },
  { title: "Humidity %RH", keys: ["h"], labels: ["humidity"], colors: ["#4aa3ff"] },
  { title: "Pressure hPa", keys: ["p"], labels: ["pressure"], colors: ["#3fb950"] },
  { title: "Battery V", keys: ["bat"], labels: ["battery"], colors: ["#f0c45a"] },
];
const PRESENCE_COLORS = { online: "#3fb950", offline: "#5c656f", will: "#f85149", unknown: "#2c2545" };

export class Panel {
  constructor(store, api) {
    this.store = store;
    this.api = api;
    this.id = null;
    this.root = document.getElementById("panel");
    this.charts = [];
    this.series = null;   // {x: [], t: [], ...}
    this.presence = [];   // [{t, state, reason, text}]
    this.chartsDirty = false;
    this.shownVersion = -1;
    document.getElementById("p-close").addEventListener("click", () => this.onClose());
    for (const b of this.root.querySelectorAll(".cmds button")) {
      b.addEventListener("click", () => this.command(b));
    }
    this.onClose = () => {};
    this.mine = new Set();  // ids of the commands this page sent: their results are shown by command()
  }

  // A `result` event for the open device that another client asked for
  // (another page, the WebSocket, a script): shown with what it says.
  remoteResult(device, d) {
    if (device !== this.id) return;
    const p = d.payload && typeof d.payload === "object" ? d.payload : {};
    if (typeof p.id === "string" && this.mine.has(p.id)) return;
    const ok = p.ok === true;
    const li = el("li", ok ? "ok" : "fail");
    const opEl = el("span", "op", "other client ");
    opEl.append(el("span", "st2", ok ? "ok" : "error"));
    li.append(el("span", "dim", clock(d.at ?? nowS())), opEl,
      el("span", "out", brief(ok ? p.result : p.error)),
      el("span", "rtt", typeof d.rtt_ms === "number" ? `${d.rtt_ms.toFixed(0)} ms` : ""));
    const list = document.getElementById("p-results");
    list.prepend(li);
    while (list.children.length > 30) list.lastChild.remove();
  }

  async open(id) {
    this.id = id;
    this.root.hidden = false;
    this.series = { x: [], t: [], mcu: [], h: [], p: [], bat: [] };
    this.presence = [];
    this.lastSeqPlotted = null;
    document.getElementById("p-id").textContent = id;
    document.getElementById("p-results").replaceChildren();
    this.buildCharts();
    this.shownVersion = -1;
    this.update();
    let detail;
    try {
      detail = await this.api.device(id);
    } catch (e) {
      this.pushPresenceNote(`history unavailable: ${e.message}`);
      return;
    }
    if (this.id !== id || !detail) return;
    const hist = detail.telemetry ?? detail.history ?? detail.recent ?? [];
    const fresh = this.series;
    this.series = { x: [], t: [], mcu: [], h: [], p: [], bat: [] };
    for (const item of Array.isArray(hist) ? hist : []) {
      const payload = item && typeof item.payload === "object" && item.payload ? item.payload : item;
      this.addPoint(payload, item?.at ?? item?.t_rx ?? null);
    }
    // Points that arrived live while the history was on its way.
    for (let i = 0; i < fresh.x.length; i++) {
      if (this.series.x.length && fresh.x[i] <= this.series.x[this.series.x.length - 1]) continue;
      for (const k of Object.keys(fresh)) this.series[k].push(fresh[k][i]);
    }
    const pres = detail.presence ?? detail.presence_history ?? detail.timeline ?? [];
    const live = this.presence;
    this.presence = [];
    for (const p of Array.isArray(pres) ? pres : []) this.addPresence(p);
    for (const p of live) if (!this.presence.length || p.t > this.presence[this.presence.length - 1].t) this.presence.push(p);
    this.chartsDirty = true;
    this.presenceDirty = true;
  }

  close() {
    this.id = null;
    this.root.hidden = true;
    for (const c of this.charts) c.plot.destroy();
    this.charts = [];
  }

  buildCharts() {
    for (const c of this.charts) c.plot.destroy();
    this.charts = [];
    const box = document.getElementById("p-charts");
    this.noData = el("div", "nodata", "no readings yet");
    box.replaceChildren(this.noData);
    const width = Math.max(280, this.root.clientWidth - 30);
    for (const g of GROUPS) {
      const div = el("div", "chart");
      box.appendChild(div);
      const opts = {
        title: g.title, width, height: 118,
        cursor: { drag: { x: false, y: false } },
        legend: { show: true, live: true },
        scales: { x: { time: true } },
        axes: [
          { stroke: "#7d8a98", grid: { stroke: "#222b35", width: 1 }, ticks: { stroke: "#27313c" },
            values: (u, splits) => {
              const span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
              return splits.map((t) => (span < 600 ? clock(t) : clock(t).slice(0, 5)));
            } },
          { stroke: "#7d8a98", grid: { stroke: "#222b35", width: 1 }, ticks: { stroke: "#27313c" }, size: 46 },
        ],
        series: [{ label: "time", value: (u, v) => (v === null || v === undefined ? "–" : clock(v)) }, ...g.keys.map((k, i) => ({
          label: g.labels[i], stroke: g.colors[i], width: 1.5, spanGaps: false,
          points: { show: false },
          value: (u, v) => (v === null || v === undefined ? "–" : v.toFixed(k === "bat" ? 2 : 1)),
        }))],
      };
      const plot = new uPlot(opts, [[], ...g.keys.map(() => [])], div);
      this.charts.push({ g, plot, div });
    }
  }

  addPoint(payload, tRx) {
    if (!payload || typeof payload !== "object") return;
    // The backend's receive time: one clock for every device (a board's `ts` is whole seconds, or null before NTP).
    const x = typeof tRx === "number" ? tRx : (typeof payload.ts === "number" ? payload.ts : nowS());
    const s = this.series;
    if (s.x.length && x < s.x[s.x.length - 1]) return;  // charts need increasing x
    const err = payload.err && typeof payload.err === "object" ? payload.err : {};
    s.x.push(x);
    for (const k of ["t", "mcu", "h", "p", "bat"]) {
      const v = payload[k];
      s[k].push(typeof v === "number" && err[k] === undefined ? v : null);
    }
    if (s.x.length > MAX_POINTS) for (const k of Object.keys(s)) s[k].splice(0, s.x.length - MAX_POINTS);
    this.chartsDirty = true;
  }

  // Live events for this device (called once per frame with what arrived).
  telemetry(d, payload) {
    this.addPoint(payload, d.at ?? null);
  }

  status(r) {
    this.addPresence({ t: r.since ?? nowS(), state: r.state, reason: r.reason, fw: r.fw, boot: r.boot, reset: r.reset });
    this.presenceDirty = true;
  }

  addPresence(p) {
    if (!p || typeof p !== "object") return;
    const payload = p.payload && typeof p.payload === "object" ? p.payload : {};
    let state = p.state ?? p.kind ?? p.event;
    if (state === "birth") state = "online";
    if (state === "planned") state = "offline";
    if (!["online", "offline", "will", "unknown"].includes(state)) {
      const online = p.online ?? payload.online;
      state = online ? "online" : ((p.reason ?? payload.reason) ? "offline" : "will");
    }
    const t = Number(p.t ?? p.time ?? p.since ?? p.at ?? nowS());
    const entry = { t, state, reason: p.reason ?? payload.reason ?? null,
      fw: p.fw ?? payload.fw, boot: p.boot ?? payload.boot, reset: p.reset ?? payload.reset };
    const last = this.presence[this.presence.length - 1];
    if (last && last.t === entry.t && last.state === entry.state) return;
    this.presence.push(entry);
    if (this.presence.length > 500) this.presence.shift();
  }

  pushPresenceNote(text) {
    document.getElementById("p-presence").replaceChildren(el("li", "dim", text));
  }

  // Called every frame: redraw what changed.
  update() {
    if (!this.id) return;
    const r = this.store.devices.get(this.id);
    if (r && r.version !== this.shownVersion) {
      this.shownVersion = r.version;
      this.renderFacts(r);
    } else if (!r) {
      const pill = document.getElementById("p-state");
      pill.textContent = "gone"; pill.className = "pill unknown";
    }
    if (this.chartsDirty) {
      this.chartsDirty = false;
      const s = this.series;
      let shown = 0;
      for (const c of this.charts) {
        const any = c.g.keys.some((k) => s[k].some((v) => v !== null));
        c.div.hidden = !any;
        if (any) { shown++; c.plot.setData([s.x, ...c.g.keys.map((k) => s[k])]); }
      }
      this.noData.hidden = shown > 0;
    }
    if (this.presenceDirty || (this._tick = (this._tick || 0) + 1) % 60 === 0) {
      this.presenceDirty = false;
      this.renderPresence();
    }
  }

  renderFacts(r) {
    const pill = document.getElementById("p-state");
    pill.textContent = r.state === "will" ? "Will" : r.state;
    pill.className = `pill ${r.state}`;
    const facts = [
      ["fw", r.fw], ["boot", r.boot], ["reset", r.reset],
      ["ip", r.ip], ["since", r.since ? `${clock(r.since)} (${ago(nowS() - r.since)})` : ""],
      ["reason", r.reason],
      ["received", r.received], ["lost", r.lost], ["last seq", r.seq],
      ["reconnects", r.reconnects], ["Wills", r.wills],
      ["last seen", r.lastRx ? `${ago((Date.now() - r.lastRx) / 1000)} ago` : ""],
    ];
    const dl = document.getElementById("p-facts");
    dl.replaceChildren(...facts.map(([k, v]) => {
      const d = el("div");
      d.append(el("dt", null, k), el("dd", null, v === null || v === undefined || v === "" ? "–" : v));
      return d;
    }));
    const box = document.getElementById("p-faults");
    if (r.fault) {
      box.hidden = false;
      box.replaceChildren(el("span", null, "sensor fault: "));
      for (const [k, v] of Object.entries(r.fault)) {
        box.append(el("b", null, k), document.createTextNode(` ${brief(v, 80)}  `));
      }
    } else box.hidden = true;
  }

  renderPresence() {
    const cv = document.getElementById("p-timeline");
    const w = cv.clientWidth || 400, h = 36, bh = 20, dpr = window.devicePixelRatio || 1;
    cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const list = this.presence;
    const now = nowS();
    const t0 = list.length ? Math.min(list[0].t, now - 60) : now - 60;
    const span = Math.max(now - t0, 1);
    const xOf = (t) => ((t - t0) / span) * w;
    for (let i = 0; i < list.length; i++) {
      const a = list[i], b = list[i + 1];
      const x0 = xOf(a.t), x1 = b ? xOf(b.t) : w;
      ctx.fillStyle = PRESENCE_COLORS[a.state] || PRESENCE_COLORS.unknown;
      ctx.fillRect(x0, 0, Math.max(1, x1 - x0), bh);
      if (a.state === "will") { ctx.fillStyle = "#ffa198"; ctx.fillRect(x0, 0, 2, bh); }
    }
    ctx.fillStyle = "#7d8a98";
    ctx.font = "10px system-ui";
    ctx.fillText(clock(t0), 2, h - 1);
    const lab = "now";
    ctx.fillText(lab, w - ctx.measureText(lab).width - 2, h - 1);
    const ol = document.getElementById("p-presence");
    const items = [];
    for (let i = list.length - 1; i >= 0 && items.length < 50; i--) {
      const p = list[i];
      const li = el("li");
      let text;
      if (p.state === "online") {
        const bits = [p.fw && `fw ${p.fw}`, p.boot !== undefined && p.boot !== null && `boot ${p.boot}`, p.reset && `reset ${p.reset}`].filter(Boolean);
        text = `online${bits.length ? " — " + bits.join(", ") : ""}`;
      } else if (p.state === "will") text = "Will: lost without a goodbye";
      else if (p.state === "offline") text = `offline${p.reason ? ": " + p.reason : ""}`;
      else text = p.state;
      li.append(el("span", "dim", `${clock(p.t)} (${ago(now - p.t)} ago)`), el("span", `st ${p.state}`, text));
      items.push(li);
    }
    if (!items.length) items.push(el("li", "dim", "no presence events yet"));
    ol.replaceChildren(...items);
  }

  async command(button) {
    const id = this.id;
    if (!id) return;
    const op = button.dataset.op;
    let args = {};
    if (op === "led") args = { on: button.dataset.on === "true" };
    if (op === "set_interval") args = { seconds: Number(document.getElementById("a-interval").value) };
    if (op === "sleep") args = { seconds: Number(document.getElementById("a-sleep").value) };
    const li = el("li", "pending");
    const stEl = el("span", "st2", "…");
    const out = el("span", "out", Object.keys(args).length ? brief(args) : "");
    const rtt = el("span", "rtt", "");
    const opEl = el("span", "op", `${op} `);
    opEl.append(stEl);
    li.append(el("span", "dim", clock(nowS())), opEl, out, rtt);
    const list = document.getElementById("p-results");
    list.prepend(li);
    while (list.children.length > 30) list.lastChild.remove();
    const cmdId = `page-${Math.random().toString(36).slice(2, 10)}`;
    this.mine.add(cmdId);
    if (this.mine.size > 200) this.mine.delete(this.mine.values().next().value);
    const t0 = performance.now();
    let res;
    try {
      res = await this.api.command(id, op, args, cmdId);
    } catch (e) {
      res = { status: 0, body: { error: e.message } };
    }
    const ms = performance.now() - t0;
    const body = res.body && typeof res.body === "object" ? res.body : { error: String(res.body) };
    const p = body.payload && typeof body.payload === "object" ? body.payload : body;
    li.dataset.op = op;
    if (res.status === 200 && p.ok !== false) {
      li.className = "ok"; stEl.textContent = "ok";
      out.textContent = brief(p.result ?? p);
    } else {
      li.className = "fail";
      stEl.textContent = res.status === 504 ? "timeout" : "error";
      out.textContent = brief(p.error ?? body.detail ?? body.error ?? `HTTP ${res.status}`);
    }
    const devRtt = typeof body.rtt_ms === "number" ? ` (device ${body.rtt_ms.toFixed(0)} ms)` : "";
    rtt.textContent = `${ms.toFixed(0)} ms`;
    rtt.title = `round trip seen by the page${devRtt}`;
  }
}
