"""A small self-contained Chrome-trace viewer (one HTML file, no network).

``trace_viewer(trace_path, html_path)`` embeds the trace's complete events (``ph:
"X"``) and draws them on a canvas: one lane per (process, thread) with the names the
trace's metadata gives ("rank 1 / communication"), a time axis, colours by category;
drag pans, wheel zooms, hovering shows an event's name, duration and args. Chrome's
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
             dataloader:"#b07aa1", user_annotation:"#76b7b2", step:"#bab0ac"};
const evs = T.traceEvents.filter(e => e.ph === "X");
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
function size() { c.width = window.innerWidth; c.height = Math.max(200, 40 + lanes.length * LH); }
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
  ctx.fillStyle = "#000"; ctx.fillRect(LEFT - 1, 0, 1, c.height);
  const span = (t1 - t0) || 1;
  for (let k = 0; k <= 10; k++) {
    const ts = t0 + span * k / 10, x = X(ts);
    if (x < LEFT || x > c.width) continue;
    ctx.fillStyle = "#555"; ctx.fillText(((ts - t0) / 1000).toFixed(1) + " ms", x + 2, 12);
    ctx.fillRect(x, 14, 1, 6);
  }
}
function fit() { scale = (c.width - LEFT - 20) / ((t1 - t0) || 1); off = 0; }
size(); fit(); draw();
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
    keep = [e for e in doc.get("traceEvents", []) if e.get("ph") in ("X", "M")]
    data = json.dumps({"traceEvents": keep}).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", html.escape(title or f"timeline: {trace_path}")) \
        .replace("__DATA__", data)
    html_path = html_path or trace_path + ".html"
    with open(html_path, "w") as f:
        f.write(page)
    return html_path
