// fogmesh web UI: draws the service graph from the page's embedded state
// and refreshes the page's main part every few seconds. No dependencies.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 3000;

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function color(success) {
  if (success < 0) return "#9aa6b2";
  if (success >= 0.99) return "#2e8540";
  if (success >= 0.9) return "#e07b00";
  return "#c62828";
}

function fmtPct(f) { return f < 0 ? "-" : (100 * f).toFixed(1) + "%"; }
function fmtMs(f) { return f < 0 ? "-" : (1000 * f).toFixed(1) + " ms"; }

// drawGraph lays the graph out in three columns: source nodes, services,
// and the nodes whose instances answer. A line from a source to a service
// carries what that node sends it; a line from a service to a node what
// that node's instance answers. Each is labelled with its rate, success
// ratio and (highest) p99.
function drawGraph(state) {
  const svg = document.getElementById("graph-svg");
  if (!svg) return;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const edges = (state.edges || []).filter(e => e.rps > 0);
  if (edges.length === 0) {
    svg.appendChild(el("text", { x: 20, y: 40 }, "no traffic in the last interval"));
    return;
  }
  const sum = (key) => {
    const m = new Map();
    for (const e of edges) {
      const [from, to] = key(e);
      const id = from + "\u0000" + to;
      const a = m.get(id) || { from: from, to: to, rps: 0, ok: 0, p99: -1 };
      a.rps += e.rps;
      a.ok += e.success < 0 ? 0 : e.success * e.rps;
      a.p99 = Math.max(a.p99, e.p99);
      m.set(id, a);
    }
    return [...m.values()].map(a => ({ ...a, success: a.rps > 0 ? a.ok / a.rps : -1 }));
  };
  const source = e => (e.sourceService ? e.sourceService + " @ " : "") + (e.sourceNode || "?");
  const left = sum(e => [source(e), e.service]);
  const right = sum(e => [e.service, e.node || "?"]);
  const srcs = [...new Set(left.map(a => a.from))].sort();
  const svcs = [...new Set(left.map(a => a.to))].sort();
  const dsts = [...new Set(right.map(a => a.to))].sort();
  const rowH = 56, top = 20, boxH = 26;
  const rows = Math.max(srcs.length, svcs.length, dsts.length);
  const height = rows * rowH + top;
  svg.setAttribute("viewBox", "0 0 960 " + height);
  svg.style.height = height + "px";
  // Center a shorter column vertically.
  const yOf = (list, name) => top + (rows - list.length) * rowH / 2 + list.indexOf(name) * rowH + boxH / 2;
  const cols = { src: [10, 150], svc: [400, 160], dst: [800, 150] };
  const maxRps = Math.max(...left.map(a => a.rps), ...right.map(a => a.rps));
  const line = (a, x1, y1, x2, y2, atEnd) => {
    const w = 1 + 5 * a.rps / maxRps;
    const l = el("line", { x1: x1, y1: y1, x2: x2, y2: y2, stroke: color(a.success), "stroke-width": w.toFixed(1), class: "edge-line" });
    l.appendChild(el("title", {}, a.from + " → " + a.to));
    svg.appendChild(l);
    // Label where lines fan out least: at the source end on the left,
    // at the destination end on the right.
    const at = atEnd ? { x: x2 - 8, y: y2 - 6, "text-anchor": "end" } : { x: x1 + 8, y: y1 - 6 };
    const t = el("text", { ...at, class: "label" },
      a.rps.toFixed(1) + " rps · " + fmtPct(a.success) + " · p99 " + fmtMs(a.p99));
    svg.appendChild(t);
  };
  for (const a of left) {
    line(a, cols.src[0] + cols.src[1], yOf(srcs, a.from), cols.svc[0], yOf(svcs, a.to));
  }
  for (const a of right) {
    line(a, cols.svc[0] + cols.svc[1], yOf(svcs, a.from), cols.dst[0], yOf(dsts, a.to), true);
  }
  for (const [list, [x, w], cls] of [[srcs, cols.src, "box"], [svcs, cols.svc, "box service"], [dsts, cols.dst, "box"]]) {
    for (const name of list) {
      const y = yOf(list, name) - boxH / 2;
      svg.appendChild(el("rect", { x: x, y: y, width: w, height: boxH, rx: 4, class: cls }));
      svg.appendChild(el("text", { x: x + 6, y: y + 17 }, name));
    }
  }
}

function readState(doc) {
  const s = doc.getElementById("state");
  return s ? JSON.parse(s.textContent) : null;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("/ui", { credentials: "same-origin", cache: "no-store" });
    if (!resp.ok) throw new Error(resp.status + " " + resp.statusText);
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const fresh = doc.getElementById("main");
    if (!fresh) throw new Error("no main in the answer (signed out?)");
    document.getElementById("main").replaceWith(document.adoptNode(fresh));
    drawGraph(readState(document));
    status.textContent = "live · updated " + new Date().toLocaleTimeString();
  } catch (err) {
    status.textContent = "refresh failed: " + err.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const state = readState(document);
  if (state) drawGraph(state);
  setInterval(refresh, REFRESH_MS);
});
