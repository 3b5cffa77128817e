"""deepseek.viz in a real headless Chromium: show_graph's page loads without console
errors and shows the expected boxes (collapsed modules, then expanded by clicks);
SVG and DOT outputs. The browser helpers here are shared with tests/test_timeline.py.
Skips when no chromium binary is installed (.ci/run installs the Debian package)."""
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib

import pytest

import deepseek as ds
import deepseek.nn as nn
import deepseek.viz as viz

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary")

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--enable-logging=stderr", "--v=0", "--allow-file-access-from-files"]


def chromium(url, *extra, timeout=90):
    """Run headless Chromium with a fresh profile on ``url``; (stdout, stderr)."""
    prof = tempfile.mkdtemp(prefix="ds-chromium-")
    try:
        r = subprocess.run([CHROMIUM, *_FLAGS, f"--user-data-dir={prof}", *extra, url],
                           capture_output=True, text=True, timeout=timeout)
        return r.stdout, r.stderr
    finally:
        shutil.rmtree(prof, ignore_errors=True)


def console_errors(stderr):
    """Console messages of the page that are errors (uncaught exceptions, console.error)."""
    out = []
    for line in stderr.splitlines():
        if "CONSOLE" in line and re.search(r"Uncaught|Error|error", line):
            out.append(line)
    return out


def dump_dom(path, timeout=90):
    out, err = chromium("file://" + os.path.abspath(path), "--dump-dom",
                        "--virtual-time-budget=3000", timeout=timeout)
    return out, err


def body_attrs(dom):
    m = re.search(r"<body([^>]*)>", dom)
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1))) if m else {}


def read_png(path):
    """(width, height, rows of RGB(A) tuples' bytes, channels) of an 8-bit PNG."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), (depth, ctype)
            ch = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * ch
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows, ch


def pixel_colors(path, step=2):
    """Counter of (r, g, b) over the screenshot (every ``step``-th pixel and row)."""
    from collections import Counter
    w, h, rows, ch = read_png(path)
    cnt = Counter()
    for row in rows[::step]:
        for x in range(0, w, step):
            cnt[tuple(row[x * ch:x * ch + 3])] += 1
    return cnt


def _model():
    ds.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


# ---------------------------------------------------------------- no browser needed
def test_graph_data_nodes_modules_and_shapes():
    m = _model()
    with viz.record_graph(m) as rec:
        out = m(ds.randn(2, 8))
    g = viz.build_graph(out, rec)
    kinds = sorted(n["kind"] for n in g["nodes"])
    # output, 3 ops (linear, relu, linear), 4 parameters
    assert kinds == ["op"] * 3 + ["output"] + ["param"] * 4
    lin = [n for n in g["nodes"] if n["label"] == "linear"]
    assert {n["module"] for n in lin} == {"0 (Linear)", "2 (Linear)"}
    first = next(n for n in lin if n["module"] == "0 (Linear)")
    assert first["details"]["input_shapes"] == [[2, 8], [16, 8], [16]]
    assert first["details"]["output_shapes"] == [[2, 16]]
    assert first["details"]["node"] == "AddmmBackward0"
    assert first["details"]["input_dtypes"][0] == "float32"
    w0 = next(n for n in g["nodes"] if n["label"] == "0.weight")
    assert w0["module"] == "0 (Linear)"
    assert len(g["edges"]) == 1 + 3 + 1 + 2  # out<-lin2<-(relu,w,b); relu<-lin1<-(w,b)
    assert {x["path"] for x in g["groups"]} == {"0 (Linear)", "1 (ReLU)", "2 (Linear)"}
    assert all(x["collapsed"] for x in g["groups"])


def test_dot_and_svg(tmp_path):
    m = _model()
    dot = viz.show_graph(m, None, input=ds.randn(2, 8), format="dot")
    assert dot.startswith("digraph") and dot.count("->") == 7
    assert 'subgraph "cluster_0 (Linear)"' in dot
    p = viz.show_graph(m, str(tmp_path / "g.svg"), input=ds.randn(2, 8), format="svg")
    svg = open(p).read()
    import xml.etree.ElementTree as ET
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    nodes = [g for g in root.iter(ns + "g") if g.get("class") == "node"]
    assert len(nodes) == 8
    assert len([e for e in root.iter(ns + "line") if e.get("class") == "edge"]) == 7


def test_tensor_input_and_errors():
    x = ds.randn(3, requires_grad=True)
    y = (x * 2 + 1).sum()
    text = viz.show_graph(y, None)
    assert "<script>" in text and "http://" not in text.replace("http://www.w3.org", "")
    with pytest.raises(ValueError):
        viz.show_graph(ds.randn(3), None)
    with pytest.raises(ValueError):
        viz.show_graph(_model(), None)
    with pytest.raises(ValueError):
        viz.show_graph(y, None, format="png")


# ---------------------------------------------------------------- in Chromium
@needs_chromium
def test_graph_page_in_chromium(tmp_path):
    m = _model()
    page = viz.show_graph(m, str(tmp_path / "graph.html"), input=ds.randn(2, 8))
    text = open(page).read()
    assert "<script src" not in text and "cdn" not in text.lower()
    dom, err = dump_dom(page)
    assert not console_errors(err), console_errors(err)
    a = body_attrs(dom)
    assert a.get("data-ready") == "1", (a, err[-2000:])
    assert a["data-total-nodes"] == "8"
    # collapsed: each module is one box (3) + the output; the parameters sit in their
    # modules' boxes
    assert a["data-visible-nodes"] == "4"
    assert dom.count('class="node module"') == 3
    # and they are on screen: the screenshot shows the three module boxes' colour
    shot = str(tmp_path / "graph.png")
    chromium("file://" + page, f"--screenshot={shot}", "--window-size=1200,500",
             "--virtual-time-budget=3000", "--hide-scrollbars")
    colors = pixel_colors(shot)
    assert colors.get((0xea, 0xd1, 0xf5), 0) > 3 * 800, colors.most_common(6)
    assert colors.get((0xf4, 0xcc, 0xcc), 0) > 600  # the output box


@needs_chromium
def test_graph_page_clicks_in_chromium(tmp_path):
    """Click a Linear box: it expands into its op and parameters; click a node: the
    panel shows its op, shapes and module path; click the group title: it collapses."""
    m = _model()
    page = viz.show_graph(m, str(tmp_path / "graph.html"), input=ds.randn(2, 8))
    probe = """<script>
    const click = el => el.dispatchEvent(new MouseEvent("click", {bubbles: true}));
    const box = [...document.querySelectorAll("g.node.module")].find(
        g => g.textContent.includes("0 (Linear)"));
    click(box);
    document.body.setAttribute("data-after-expand", document.querySelectorAll("g.node").length);
    const lin = [...document.querySelectorAll("g.node")].find(g => g.textContent === "linear");
    click(lin);
    document.body.setAttribute("data-panel", encodeURIComponent(document.getElementById("panel").textContent));
    const title = [...document.querySelectorAll("g.grp text.title")].find(t => t.textContent.includes("0 (Linear)"));
    click(title);
    document.body.setAttribute("data-after-collapse", document.querySelectorAll("g.node").length);
    </script></body>"""
    text = open(page).read().replace("</body>", probe)
    open(page, "w").write(text)
    dom, err = dump_dom(page)
    assert not console_errors(err), console_errors(err)
    a = body_attrs(dom)
    assert a["data-after-expand"] == "6"   # linear + weight + bias replace one box
    from urllib.parse import unquote
    panel = unquote(a["data-panel"])
    assert '"op": "linear"' in panel and '"module": "0 (Linear)"' in panel
    assert "[\n    2,\n    8\n  ]" in panel or "2,\n" in panel
    assert a["data-after-collapse"] == "4"
