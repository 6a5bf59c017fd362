// Small helpers shared by the page's modules. Device strings are untrusted:
// everything here builds DOM with textContent, never with HTML strings.

export const STATES = ["online", "offline", "will", "unknown"];

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}`;
  return `${Math.floor(s / 86400)}d`;
}

export function clock(unixSeconds) {
  if (!Number.isFinite(unixSeconds)) return "";
  const d = new Date(unixSeconds * 1000);
  return d.toLocaleTimeString([], { hour12: false });
}

export function fmt(v, digits) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return Number.isFinite(v) ? v.toFixed(digits) : "";
  return String(v);
}

// A short one-line rendering of any JSON value, for result cells (shown as text).
export function brief(value, max = 240) {
  let s;
  try { s = typeof value === "string" ? value : JSON.stringify(value); } catch { s = String(value); }
  if (s === undefined) s = "";
  return s.length > max ? s.slice(0, max - 1) + "…" : s;
}

// Natural order for ids like dev-00002 < dev-00010 and board-2 < board-10.
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
export const byId = (a, b) => collator.compare(a, b);

export const nowS = () => Date.now() / 1000;
