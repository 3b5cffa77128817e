"""The bundled HTML/JS of deepseek.viz (inline: the pages need no network)."""

GRAPH_PAGE = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
html,body{margin:0;height:100%;font-family:Helvetica,Arial,sans-serif;font-size:12px}
#bar{position:absolute;top:0;left:0;right:0;height:28px;background:#f3f3f3;border-bottom:1px solid #ccc;
     padding:5px 10px;box-sizing:border-box}
#canvas{position:absolute;top:28px;left:0;width:calc(100% - 320px);height:calc(100% - 28px);cursor:grab}
#panel{position:absolute;top:28px;right:0;width:320px;bottom:0;border-left:1px solid #ccc;
       padding:8px;box-sizing:border-box;overflow:auto;white-space:pre-wrap;font-family:monospace}
g.node rect{stroke:#333} g.node.sel rect{stroke:#e00;stroke-width:2}
g.node text,g.grp text{pointer-events:none}
g.grp rect.frame{fill:none;stroke:#888;stroke-dasharray:4 3}
g.grp text.title{fill:#555;cursor:pointer}
</style></head>
<body>
<div id="bar"><b>__TITLE__</b> &nbsp; drag: pan, wheel: zoom, click a node: details,
 click a module box: expand, click a group title: collapse &nbsp;
 <span id="count"></span></div>
<svg id="canvas" xmlns="http://www.w3.org/2000/svg"><defs>
<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto">
<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs><g id="view"></g></svg>
<div id="panel">click a node</div>
<script>
"use strict";
const G = __DATA__;
const NS = "http://www.w3.org/2000/svg";
const COLORS = {op:"#dbe9ff", param:"#e6f5d0", leaf:"#fff2cc", output:"#f4cccc", module:"#ead1f5"};
const collapsed = new Set(G.groups.filter(g => g.collapsed).map(g => g.id));
const groupOf = {};            // node id -> innermost group id
const groupByPath = {};
G.groups.forEach(g => { groupByPath[g.path] = g; g.members.forEach(m => groupOf[m] = g.id); });
function ancestors(gid) { const out = []; while (gid !== null && gid !== undefined) { out.push(gid); gid = G.groups[gid].parent; } return out; }
function allMembers(gid) {     // nodes in the group or its sub-groups
  let out = G.groups[gid].members.slice();
  G.groups.forEach(h => { if (h.parent === gid) out = out.concat(allMembers(h.id)); });
  return out;
}
function rep(nid) {            // what stands for a node: itself or its outermost collapsed group
  const gid = groupOf[nid];
  if (gid === undefined) return "n" + nid;
  const anc = ancestors(gid);
  for (let i = anc.length - 1; i >= 0; i--) if (collapsed.has(anc[i])) return "g" + anc[i];
  return "n" + nid;
}
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
const view = document.getElementById("view");
const panel = document.getElementById("panel");
let tx = 0, ty = 0, sc = 1;
function applyView() { view.setAttribute("transform", `translate(${tx},${ty}) scale(${sc})`); }
function show(obj) { panel.textContent = JSON.stringify(obj, null, 2); }
function render() {
  while (view.firstChild) view.removeChild(view.firstChild);
  const boxes = {};            // rep id -> {x, y, label, kind, details}
  G.nodes.forEach(n => {
    const r = rep(n.id);
    if (r[0] === "n") boxes[r] = {x: n.x, y: n.y, label: n.label, kind: n.kind, details: n.details, id: n.id};
    else {
      const b = boxes[r] || (boxes[r] = {xs: [], ys: [], kind: "module", gid: +r.slice(1)});
      b.xs.push(n.x); b.ys.push(n.y);
    }
  });
  for (const k in boxes) {
    const b = boxes[k];
    if (b.kind === "module") {
      b.x = b.xs.reduce((a, c) => a + c, 0) / b.xs.length;
      b.y = b.ys.reduce((a, c) => a + c, 0) / b.ys.length;
      const g = G.groups[b.gid];
      b.label = g.path; b.details = {module: g.path, ops: allMembers(b.gid).map(m => G.nodes[m].label)};
    }
  }
  // layered layout of what is visible: column = longest path from an input (bounded
  // relaxation: collapsing a module used twice may close a cycle), row = order in column
  const keys = Object.keys(boxes), redges = [];
  const rseen = new Set();
  G.edges.forEach(([s, d]) => { const a = rep(s), b = rep(d);
    if (a !== b && !rseen.has(a + ">" + b)) { rseen.add(a + ">" + b); redges.push([a, b]); } });
  const depth = {}; keys.forEach(k => depth[k] = 0);
  for (let it = 0; it < keys.length; it++) {
    let changed = false;
    redges.forEach(([a, b]) => { if (depth[b] < depth[a] + 1) { depth[b] = depth[a] + 1; changed = true; } });
    if (!changed) break;
  }
  const cols = {};
  keys.forEach(k => (cols[depth[k]] = cols[depth[k]] || []).push(k));
  for (const d in cols) cols[d].sort((a, b) => boxes[a].y - boxes[b].y || (a < b ? -1 : 1))
    .forEach((k, i) => { boxes[k].x = 40 + 190 * d; boxes[k].y = 40 + 60 * i; });
  // expanded groups: frames around their visible members
  const layer = el("g", {}, view);
  G.groups.forEach(g => {
    if (ancestors(g.id).some(a => collapsed.has(a))) return;
    const mem = allMembers(g.id).map(m => boxes[rep(m)]).filter(Boolean);
    if (!mem.length) return;
    const x0 = Math.min(...mem.map(m => m.x)) - 10, y0 = Math.min(...mem.map(m => m.y)) - 24;
    const x1 = Math.max(...mem.map(m => m.x)) + 160, y1 = Math.max(...mem.map(m => m.y)) + 44;
    const gg = el("g", {"class": "grp"}, layer);
    el("rect", {"class": "frame", x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 6}, gg);
    const t = el("text", {"class": "title", x: x0 + 4, y: y0 + 13}, gg);
    t.textContent = "\u25BE " + g.path;
    t.style.pointerEvents = "all";
    t.addEventListener("click", ev => { ev.stopPropagation(); collapsed.add(g.id); render(); });
  });
  const seen = new Set();
  G.edges.forEach(([s, d]) => {
    const a = rep(s), b = rep(d);
    if (a === b || seen.has(a + ">" + b)) return;
    seen.add(a + ">" + b);
    const A = boxes[a], B = boxes[b];
    el("line", {"class": "edge", x1: A.x + 150, y1: A.y + 15, x2: B.x, y2: B.y + 15,
                stroke: "#555", "marker-end": "url(#arrow)"}, view);
  });
  let n = 0;
  for (const k in boxes) {
    const b = boxes[k];
    n++;
    const g = el("g", {"class": "node" + (b.kind === "module" ? " module" : ""), "data-rep": k}, view);
    el("rect", {x: b.x, y: b.y, width: 150, height: 30, rx: 4, fill: COLORS[b.kind]}, g);
    const t = el("text", {x: b.x + 75, y: b.y + 19, "text-anchor": "middle"}, g);
    t.textContent = (b.kind === "module" ? "\u25B8 " : "") + String(b.label).slice(0, 22);
    g.addEventListener("click", ev => {
      ev.stopPropagation();
      document.querySelectorAll("g.node.sel").forEach(x => x.classList.remove("sel"));
      g.classList.add("sel");
      show(b.details);
      if (b.kind === "module") { collapsed.delete(b.gid); render(); }
    });
  }
  document.getElementById("count").textContent = n + " boxes, " + G.nodes.length + " nodes";
  document.body.setAttribute("data-visible-nodes", String(n));
  document.body.setAttribute("data-total-nodes", String(G.nodes.length));
}
// pan and zoom
const svg = document.getElementById("canvas");
let drag = null;
svg.addEventListener("mousedown", e => { drag = [e.clientX - tx, e.clientY - ty]; });
window.addEventListener("mouseup", () => { drag = null; });
window.addEventListener("mousemove", e => { if (drag) { tx = e.clientX - drag[0]; ty = e.clientY - drag[1]; applyView(); } });
svg.addEventListener("wheel", e => {
  e.preventDefault();
  const f = e.deltaY < 0 ? 1.1 : 1 / 1.1;
  const r = svg.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
  tx = mx - (mx - tx) * f; ty = my - (my - ty) * f; sc *= f; applyView();
}, {passive: false});
window.deepseekGraph = {data: G, collapsed, render,
  expandAll() { collapsed.clear(); render(); },
  collapseAll() { G.groups.forEach(g => collapsed.add(g.id)); render(); }};
render();
(function fit() {           // the whole graph in view at first
  const bb = view.getBBox(), r = svg.getBoundingClientRect();
  if (bb.width > 0 && bb.height > 0) {
    sc = Math.min(1.5, (r.width - 20) / bb.width, (r.height - 20) / bb.height);
    tx = 10 - bb.x * sc; ty = 10 - bb.y * sc;
  }
})();
applyView();
document.body.setAttribute("data-ready", "1");
</script></body></html>
"""
