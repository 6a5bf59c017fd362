// esp32emu dashboard: the page. SSE (api/events) feeds the fleet; events are
// queued as they arrive and applied once per animation frame, so 1,000 msg/s
// cost one layout per frame, not one per message. Commands go by REST POST.
// Device data is untrusted: it reaches the DOM only through textContent.

import { Store, deviceOf } from "./store.js";
import { FleetTable, Overview } from "./fleet.js";
import { Panel } from "./panel.js";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";

// ---- the backend ------------------------------------------------------------
const api = {
  headers() {
    return token ? { Authorization: `Bearer ${token}` } : {};
  },
  async device(id) {
    const r = await fetch(`api/devices/${encodeURIComponent(id)}`, { headers: this.headers(), cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    return r.json();
  },
  async command(id, op, args, cmdId) {
    const r = await fetch(`api/devices/${encodeURIComponent(id)}/commands`, {
      method: "POST",
      headers: { ...this.headers(), "Content-Type": "application/json" },
      body: JSON.stringify({ op, args, id: cmdId }),
    });
    let body;
    const text = await r.text();
    try { body = JSON.parse(text); } catch { body = { error: text.slice(0, 200) }; }
    return { status: r.status, body };
  },
};

// ---- state ------------------------------------------------------------------
const store = new Store();
const stats = { events: 0, dups: 0, gaps: 0, resyncs: 0, snapshots: 0, lastId: null, opens: 0, errors: 0 };
const listeners = [];   // (type, data, arrivalMs) -- for tests and the benchmark
let queue = [];
let frameRequested = false;
let lastFrame = performance.now();
let filterText = "";
let filterState = "";
let faultsOnly = false;
let viewDirty = true;
let overviewDue = 0;

window.esp32dash = { store, stats, listeners, get state() { return connState; } };

const table = new FleetTable(store, { onSelect: select });
const overview = new Overview(store, { onSelect: (id) => { select(id); table.scrollTo(id); } });
const panel = new Panel(store, api);
panel.onClose = () => select(null);

// ---- the event stream ----------------------------------------------------------
let source = null;
let connState = "connecting";

function setConn(state, text) {
  connState = state;
  const box = document.getElementById("conn");
  box.className = `conn ${state}`;
  document.getElementById("conn-text").textContent = text;
  const banner = document.getElementById("banner");
  if (state === "reconnecting") {
    banner.hidden = false; banner.className = "banner";
    banner.textContent = "Connection to the backend lost: reconnecting… (what was missed is replayed when it is back)";
  } else if (state === "closed") {
    banner.hidden = false; banner.className = "banner error";
    banner.textContent = text;
  } else banner.hidden = true;
}

const TYPES = ["snapshot", "status", "telemetry", "result", "resync"];

function connect() {
  const q = new URLSearchParams();
  if (token) q.set("token", token);
  // A fresh EventSource (after a hard failure) cannot send Last-Event-ID: say it in the query.
  if (stats.lastId !== null && source === null) q.set("last_event_id", String(stats.lastId));
  const s = new EventSource(`api/events${q.toString() ? "?" + q : ""}`);
  source = s;
  s.onopen = () => {
    stats.opens++;
    setConn("live", "live");
  };
  s.onerror = () => {
    stats.errors++;
    if (s.readyState === EventSource.CLOSED) {
      setConn("closed", "The backend refused the event stream (check the ?token= in the URL); retrying in 5 s");
      source = null;
      setTimeout(connect, 5000);
    } else {
      setConn("reconnecting", "reconnecting…");
    }
  };
  for (const type of TYPES) s.addEventListener(type, (ev) => onEvent(type, ev.lastEventId, ev.data));
}

function onEvent(type, lastEventId, raw) {
  const arrival = Date.now();
  let data;
  try { data = JSON.parse(raw); } catch { data = null; }
  if (!data || typeof data !== "object") return;
  const id = lastEventId !== "" && lastEventId !== undefined ? Number(lastEventId)
    : (typeof data.id === "number" ? data.id : null);
  if (id !== null && Number.isFinite(id)) {
    if (stats.lastId !== null && type !== "snapshot" && type !== "resync") {
      if (id <= stats.lastId) { stats.dups++; return; }
      if (id > stats.lastId + 1) stats.gaps += id - stats.lastId - 1;
    }
    stats.lastId = id;
  }
  stats.events++;
  for (const fn of listeners) {
    try { fn(type, data, arrival); } catch (e) { console.error(e); }
  }
  queue.push([type, data]);
  requestFrame();
}

function requestFrame() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(frame);
}

// A hidden tab gets no animation frames: apply the queue anyway once a second.
setInterval(() => {
  if (performance.now() - lastFrame > 1000) frame();
  else requestFrame();  // ages and the msg/s figure tick once a second
}, 1000);

// ---- applying events, once per frame ----------------------------------------------
function apply(type, d) {
  if (type === "snapshot") {
    stats.snapshots++;
    store.snapshot(d.devices ?? d.fleet ?? []);
    viewDirty = true;
    if (panel.id) panel.shownVersion = -1;
  } else if (type === "resync") {
    stats.resyncs++;
  } else if (type === "status") {
    const r = store.status(d);
    if (r && r.id === panel.id) panel.status(r);
  } else if (type === "telemetry") {
    const r = store.telemetry(d);
    if (r && r.id === panel.id) panel.telemetry(d, r.last);
  } else if (type === "result") {
    panel.remoteResult(deviceOf(d), d);
  }
}

function frame() {
  frameRequested = false;
  lastFrame = performance.now();
  const q = queue;
  queue = [];
  for (const [type, d] of q) apply(type, d);
  if (store.membershipDirty) { store.rebuildOrder(); viewDirty = true; }
  if (store.stateDirty) {
    store.stateDirty = false;
    store.recount();
    renderCounts();
    if (filterState || faultsOnly) viewDirty = true;
    overview.dirty = true;
  }
  let shown = null;
  if (viewDirty) {
    viewDirty = false;
    const f = filterText.toLowerCase();
    const view = [];
    for (const id of store.order) {
      const r = store.devices.get(id);
      if (filterState && r.state !== filterState) continue;
      if (faultsOnly && !r.fault) continue;
      if (f && !id.toLowerCase().includes(f)) continue;
      view.push(r);
    }
    table.setView(view);
    document.getElementById("shown").textContent =
      view.length === store.devices.size ? "" : `showing ${view.length} of ${store.devices.size}`;
    overview.dirty = true;
  }
  table.render();
  const now = performance.now();
  if (overview.dirty && now >= overviewDue) {
    const filtered = table.view.length !== store.devices.size;
    if (filtered) shown = new Set(table.view.map((r) => r.id));
    overview.draw(shown);
    overviewDue = now + 250;
  }
  document.getElementById("rate").textContent = String(Math.round(store.rate()));
  panel.update();
}

function renderCounts() {
  const c = store.counts;
  for (const k of ["total", "online", "offline", "will", "unknown", "faults"]) {
    const e = document.getElementById(`count-${k}`);
    const t = String(c[k] || 0);
    if (e.textContent !== t) e.textContent = t;
  }
}

// ---- selection, filters ------------------------------------------------------------
function select(id) {
  table.selected = id;
  table.needRender = true;
  if (id === null) {
    panel.close();
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  } else {
    panel.open(id);
    history.replaceState(null, "", `${location.pathname}${location.search}#device=${encodeURIComponent(id)}`);
  }
  requestFrame();
}

function setStateFilter(state) {
  filterState = state;
  for (const b of document.querySelectorAll(".states button")) b.classList.toggle("on", b.dataset.state === state);
  viewDirty = true;
  requestFrame();
}

document.getElementById("filter").addEventListener("input", (ev) => {
  filterText = ev.target.value.trim();
  viewDirty = true;
  requestFrame();
});
for (const b of document.querySelectorAll(".states button, .counts button")) {
  b.addEventListener("click", () => setStateFilter(b.dataset.state));
}
document.getElementById("faults-only").addEventListener("change", (ev) => {
  faultsOnly = ev.target.checked;
  viewDirty = true;
  requestFrame();
});
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && panel.id) select(null);
});

const m = /^#device=(.+)$/.exec(location.hash);
if (m) select(decodeURIComponent(m[1]));
if (!token) {
  setConn("connecting", "connecting…");
  const banner = document.getElementById("banner");
  banner.hidden = false; banner.className = "banner";
  banner.textContent = "No ?token= in this page's URL: commands will be refused. Open the URL the dashboard printed.";
}
connect();
