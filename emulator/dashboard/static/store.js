// The fleet as the page knows it: one record per device, updated from the
// backend's events (SPEC section 6). Field names follow GET /api/devices; the
// event shapes are read tolerantly (top-level fields or nested objects).

import { STATES, byId, nowS } from "./util.js";

const FIELDS = ["online", "state", "reason", "since", "fw", "boot", "reset", "ip",
  "received", "lost", "reconnects", "wills", "age_s"];

export class Store {
  constructor() {
    this.devices = new Map();   // id -> record
    this.order = [];            // every id, natural order
    this.membershipDirty = false;
    this.stateDirty = false;
    this.counts = { total: 0, online: 0, offline: 0, will: 0, unknown: 0, faults: 0 };
    this.telemetryTimes = [];   // arrival times (ms) of telemetry, for msg/s
  }

  record(id) {
    let r = this.devices.get(id);
    if (!r) {
      r = { id, state: "unknown", online: false, reason: null, since: null, fw: null, boot: null,
        reset: null, ip: null, last: null, lastRx: null, received: 0, lost: 0, reconnects: 0,
        wills: 0, fault: null, seq: null, version: 0 };
      this.devices.set(id, r);
      this.membershipDirty = true;
      this.stateDirty = true;
    }
    return r;
  }

  // A device object as /api/devices and `snapshot` give it.
  merge(info) {
    const id = info.id ?? info.device;
    if (typeof id !== "string") return null;
    const r = this.record(id);
    for (const k of FIELDS) if (info[k] !== undefined) r[k] = info[k];
    if (!STATES.includes(r.state)) r.state = r.online ? "online" : "unknown";
    if (info.last && typeof info.last === "object") {
      this.setLast(r, info.last, typeof info.last_at === "number" ? info.last_at : null);
      if (typeof info.last_at !== "number" && typeof info.age_s === "number") r.lastRx = Date.now() - info.age_s * 1000;
    }
    r.version++;
    this.stateDirty = true;
    return r;
  }

  snapshot(list) {
    const seen = new Set();
    for (const info of list || []) {
      const r = this.merge(info);
      if (r) seen.add(r.id);
    }
    for (const id of [...this.devices.keys()]) {
      if (!seen.has(id)) { this.devices.delete(id); this.membershipDirty = true; }
    }
    this.stateDirty = true;
  }

  status(d) {
    const id = deviceOf(d);
    if (id === null) return null;
    const info = (d.view && typeof d.view === "object" && d.view) || (d.info && typeof d.info === "object" && d.info) || d;
    const r = this.record(id);
    const before = r.state;
    for (const k of FIELDS) if (info[k] !== undefined) r[k] = info[k];
    // A raw status payload ({"online": false, "reason": ...}) without a state word.
    const p = d.payload;
    if (info.state === undefined && p && typeof p === "object") {
      r.online = !!p.online;
      r.state = p.online ? "online" : (p.reason ? "offline" : "will");
      r.reason = p.reason ?? null;
      for (const k of ["fw", "boot", "reset", "ip"]) if (p[k] !== undefined) r[k] = p[k];
    }
    if (!STATES.includes(r.state)) r.state = r.online ? "online" : "unknown";
    if (info.since === undefined) r.since = d.at ?? nowS();
    if (r.state === "will" && before !== "will" && info.wills === undefined) r.wills++;
    r.version++;
    this.stateDirty = true;
    return r;
  }

  telemetry(d) {
    const id = deviceOf(d);
    if (id === null) return null;
    const r = this.record(id);
    const payload = (d.payload && typeof d.payload === "object") ? d.payload
      : (d.data && typeof d.data === "object") ? d.data : d;
    this.setLast(r, payload, d.at ?? d.t_rx ?? null);
    if (typeof d.received === "number") r.received = d.received; else r.received++;
    if (typeof d.lost === "number") r.lost = d.lost;
    r.version++;
    this.telemetryTimes.push(Date.now());
    return r;
  }

  setLast(r, payload, tRx) {
    r.last = payload;
    r.seq = typeof payload.seq === "number" ? payload.seq : r.seq;
    r.lastRx = tRx ? tRx * 1000 : Date.now();
    const err = payload.err && typeof payload.err === "object" ? payload.err : null;
    const fault = err && Object.keys(err).length ? err : null;
    if (!!fault !== !!r.fault) this.stateDirty = true;
    r.fault = fault;
  }

  rebuildOrder() {
    this.order = [...this.devices.keys()].sort(byId);
    this.membershipDirty = false;
  }

  recount() {
    const c = { total: 0, online: 0, offline: 0, will: 0, unknown: 0, faults: 0 };
    for (const r of this.devices.values()) {
      c.total++;
      c[r.state] = (c[r.state] || 0) + 1;
      if (r.fault) c.faults++;
    }
    this.counts = c;
  }

  rate() {
    const cut = Date.now() - 5000;
    const t = this.telemetryTimes;
    let i = 0;
    while (i < t.length && t[i] < cut) i++;
    if (i) t.splice(0, i);
    return t.length / 5;
  }
}

// The device id an event is about: `device` (string), else a string `id` of a
// device object. Numbers are the global event id, never a device.
export function deviceOf(d) {
  if (!d || typeof d !== "object") return null;
  if (typeof d.device === "string") return d.device;
  if (d.device && typeof d.device === "object" && typeof d.device.id === "string") return d.device.id;
  if (typeof d.device_id === "string") return d.device_id;
  if (typeof d.id === "string") return d.id;
  return null;
}
