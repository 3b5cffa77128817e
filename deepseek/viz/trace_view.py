"""A small self-contained Chrome-trace viewer (one HTML file, no network).

``trace_viewer(trace_path, html_path)`` embeds the trace's complete events (``ph:
"X"``) and draws them on a canvas: one lane per (process, thread) with the names the
trace's metadata gives ("rank 1 / communication"), a time axis, colours by category;
a legend, send -> recv arrows (the flow events of a merged timeline); drag pans,
wheel zooms, hovering shows an event's name, duration and args; ``page.html#from=A&to=B``
(microseconds) opens on that window. Chrome's
own viewer (chrome://tracing, ui.perfetto.dev) opens the same file; this one is for
looking at a timeline where those are not at hand, and for the tests.
"""
import html
import json

_PAGE = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>html,body{margin:0;height:100%;font-family:Helvetica,Arial,sans-serif;font-size:12px;background:#fff}
#tip{position:absolute;pointer-events:none;background:#ffd;border:1px solid #aa8;padding:3px;display:none;white-space:pre}
#hdr{height:24px;padding:4px 8px;box-sizing:border-box;background:#eee;border-bottom:1px solid #ccc}</style></head>
<body><div id="hdr"><b>__TITLE__</b> <span id="info"></span></div>
<canvas id="c"></canvas><div id="tip"></div>
<script>
"use strict";
const T = __DATA__;
const COL = {cpu_op:"#4e79a7", backward:"#f28e2b", optimizer:"#59a14f", collective:"#e15759",
             dataloader:"#b07aa1", user_annotation:"#76b7b2", step:"#bab0ac", p2p:"#edc948"};
const evs = T.traceEvents.filter(e => e.ph === "X");
const flows = {};
T.traceEvents.forEach(e => { if (e.ph === "s" || e.ph === "f") (flows[e.id] = flows[e.id] || {})[e.ph] = e; });
const pname = {}, tname = {};
T.traceEvents.forEach(e => {
  if (e.ph !== "M") return;
  if (e.name === "process_name") pname[e.pid] = e.args.name;
  if (e.name === "thread_name") tname[e.pid + "/" + e.tid] = e.args.name;
});
const lanes = [...new Set(evs.map(e => e.pid + "/" + e.tid))].sort((a, b) => {
  const [p1, t1] = a.split("/").map(Number), [p2, t2] = b.split("/").map(Number);
  return p1 - p2 || t1 - t2; });
const laneOf = {}; lanes.forEach((l, i) => laneOf[l] = i);
const t0 = Math.min(...evs.map(e => e.ts)), t1 = Math.max(...evs.map(e => e.ts + e.dur));
const c = document.getElementById("c"), ctx = c.getContext("2d");
const LH = 26, LEFT = 190;
let scale = 1, off = 0;
function size() { c.width = window.innerWidth; c.height = Math.max(200, 44 + (lanes.length + 1) * LH); }
function X(ts) { return LEFT + (ts - t0) * scale + off; }
function draw() {
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
  lanes.forEach((l, i) => {
    ctx.fillStyle = i % 2 ? "#f7f7f7" : "#fdfdfd"; ctx.fillRect(0, 20 + i * LH, c.width, LH);
    const [p, t] = l.split("/");
    ctx.fillStyle = "#333"; ctx.font = "11px Helvetica";
    ctx.fillText(((pname[p] || "pid " + p).split(" (")[0]) + " / " + (tname[l] || "tid " + t), 4, 20 + i * LH + 16);
  });
  evs.forEach(e => {
    const x = X(e.ts), w = Math.max(1, e.dur * scale), y = 20 + laneOf[e.pid + "/" + e.tid] * LH + 3;
    if (x + w < LEFT || x > c.width) return;
    ctx.fillStyle = COL[e.cat] || "#999"; ctx.fillRect(Math.max(x, LEFT), y, w, LH - 6);
  });
  // send -> recv arrows (the merged timeline's flow events, collectives/trace.py)
  ctx.strokeStyle = "#8a6d00"; ctx.lineWidth = 1;
  Object.values(flows).forEach(f => {
    if (!f.s || !f.f) return;
    const ys = 20 + laneOf[f.s.pid + "/" + f.s.tid] * LH + LH / 2, yf = 20 + laneOf[f.f.pid + "/" + f.f.tid] * LH + LH / 2;
    const xs = X(f.s.ts), xf = X(f.f.ts);
    if (isNaN(ys) || isNaN(yf) || Math.max(xs, xf) < LEFT) return;
    ctx.beginPath(); ctx.moveTo(Math.max(xs, LEFT), ys); ctx.lineTo(Math.max(xf, LEFT), yf); ctx.stroke();
  });
  ctx.fillStyle = "#000"; ctx.fillRect(LEFT - 1, 0, 1, c.height);
  // ticks over what is in view (the whole trace, or the window zoomed into)
  const v0 = t0 - off / scale, span = ((c.width - LEFT - 20) / scale) || 1;
  for (let k = 0; k <= 10; k++) {
    const ts = v0 + span * k / 10, x = X(ts);
    if (x < LEFT || x > c.width) continue;
    ctx.fillStyle = "#555"; ctx.fillText(((ts - t0) / 1000).toFixed(span < 10000 ? 2 : 1) + " ms", x + 2, 12);
    ctx.fillRect(x, 14, 1, 6);
  }
  // legend: the categories present
  let lx = LEFT; const ly = 24 + lanes.length * LH + 8;
  cats.forEach(k => {
    ctx.fillStyle = COL[k] || "#999"; ctx.fillRect(lx, ly, 12, 12);
    ctx.fillStyle = "#333"; ctx.fillText(k, lx + 16, ly + 10); lx += 28 + ctx.measureText(k).width;
  });
}
const cats = [...new Set(evs.map(e => e.cat))].sort();
function fit() { scale = (c.width - LEFT - 20) / ((t1 - t0) || 1); off = 0; }
// "#from=US&to=US" (us on the trace's clock) opens on that window instead of the whole trace
function fromHash() {
  const h = new URLSearchParams(location.hash.slice(1)), a = parseFloat(h.get("from")), b = parseFloat(h.get("to"));
  if (!(b > a)) return;
  scale = (c.width - LEFT - 20) / (b - a); off = -(a - t0) * scale;
}
size(); fit(); fromHash(); draw();
document.getElementById("info").textContent = evs.length + " events, " + lanes.length + " lanes, " +
  ((t1 - t0) / 1000).toFixed(2) + " ms";
let drag = null;
c.addEventListener("mousedown", e => drag = e.clientX - off);
window.addEventListener("mouseup", () => drag = null);
const tip = document.getElementById("tip");
window.addEventListener("mousemove", e => {
  if (drag !== null) { off = e.clientX - drag; draw(); return; }
  const r = c.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
  const lane = Math.floor((my - 20) / LH), l = lanes[lane];
  const hit = l && evs.find(ev => ev.pid + "/" + ev.tid === l && X(ev.ts) <= mx && mx <= X(ev.ts) + Math.max(1, ev.dur * scale));
  if (hit) { tip.style.display = "block"; tip.style.left = (e.pageX + 10) + "px"; tip.style.top = (e.pageY + 10) + "px";
    tip.textContent = hit.name + "  " + hit.dur.toFixed(1) + " us\n" + JSON.stringify(hit.args || {}); }
  else tip.style.display = "none";
});
c.addEventListener("wheel", e => { e.preventDefault(); const f = e.deltaY < 0 ? 1.2 : 1 / 1.2;
  const mx = e.clientX - LEFT; off = mx - (mx - off) * f; scale *= f; draw(); }, {passive: false});
window.addEventListener("resize", () => { size(); draw(); });
document.body.setAttribute("data-lanes", String(lanes.length));
document.body.setAttribute("data-events", String(evs.length));
document.body.setAttribute("data-flows", String(Object.values(flows).filter(f => f.s && f.f).length));
document.body.setAttribute("data-ready", "1");
</script></body></html>
"""


def trace_viewer(trace_path, html_path=None, title=None):
    """Write a self-contained HTML viewer of the Chrome trace at ``trace_path`` to
    ``html_path`` (default: ``trace_path`` + ``.html``); returns the path."""
    with open(trace_path) as f:
        doc = json.load(f)
    if isinstance(doc, list):
        doc = {"traceEvents": doc}
    keep = [e for e in doc.get("traceEvents", []) if e.get("ph") in ("X", "M", "s", "f")]
    data = json.dumps({"traceEvents": keep}).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", html.escape(title or f"timeline: {trace_path}")) \
        .replace("__DATA__", data)
    html_path = html_path or trace_path + ".html"
    with open(html_path, "w") as f:
        f.write(page)
    return html_path
