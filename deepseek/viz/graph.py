"""The autograd graph as a self-contained interactive HTML page, DOT text or SVG.

``show_graph(model_or_tensor, path, input=..., format="html")``:

- a **Module** with ``input``: runs ``model(input)`` (or ``model(*input)``) once while
  recording, for each op, its name, input/output shapes and dtypes and the module path
  it ran in (forward pre/post hooks on every submodule + a dispatch mode), then draws
  the graph that ends at the output;
- a **Tensor**: draws the graph behind it as it is (op names, the shapes of the leaf
  tensors; no module paths or op shapes unless it was produced inside
  :func:`record_graph`).

Nodes are backward nodes (named like PyTorch's: ``AddmmBackward0``) and leaves
(parameters by name, inputs); an edge goes from an input to the op that used it.
Ops of the same module are grouped: in the HTML page a leaf module (a Linear) is one
box that expands on click, and an expanded group collapses by clicking its title.
The page needs no network (no CDN: the script is inline), pans (drag), zooms (wheel)
and shows a node's details on click. ``format="svg"`` lays the same graph out in
Python (layered, no graphviz binary) and writes plain SVG; ``"dot"`` writes Graphviz
source.
"""
import html
import json

from ..autograd.dispatch_mode import DispatchMode
from ..autograd.function import AccumulateGrad


class _Recorder(DispatchMode):
    def __init__(self):
        self.stack = []
        self.info = {}  # id(graph node) -> details

    def __dispatch__(self, fn, args, kwargs):
        out = fn.apply(*args, **kwargs)
        first = out[0] if type(out) is tuple else out
        node = getattr(first, "grad_fn", None)
        if node is not None and getattr(node, "fn", None) is fn and id(node) not in self.info:
            from ..profiler.profiler import op_names
            outs = out if type(out) is tuple else (out,)
            fwd, _ = op_names(fn)
            self.info[id(node)] = {
                "op": fwd.split("::")[-1],
                "module": self.stack[-1] if self.stack else "",
                "input_shapes": [list(a._data.shape) for a in args if hasattr(a, "_data")],
                "input_dtypes": [str(a._data.dtype) for a in args if hasattr(a, "_data")],
                "output_shapes": [list(o._data.shape) for o in outs if hasattr(o, "_data")],
                "output_dtypes": [str(o._data.dtype) for o in outs if hasattr(o, "_data")],
                "_node": node,
            }
        return out


class record_graph:
    """``with record_graph(model) as rec: out = model(x)``; then
    ``show_graph(out, ..., recorder=rec)`` knows shapes and module paths."""

    def __init__(self, model=None):
        self.model = model
        self.rec = _Recorder()
        self._handles = []
        self.param_names = {}
        self.mod_labels = {}  # dotted module path -> group label

    def __enter__(self):
        if self.model is not None:
            for name, p in self.model.named_parameters():
                self.param_names[id(p)] = name
            for name, m in self.model.named_modules():
                path = name or type(self.model).__name__
                label = f"{path} ({type(m).__name__})" if name else path
                self.mod_labels[name] = label

                def pre(mod, args, _label=label):
                    self.rec.stack.append(_label)

                def post(mod, args, out):
                    if self.rec.stack:
                        self.rec.stack.pop()
                self._handles.append(m.register_forward_pre_hook(pre))
                self._handles.append(m.register_forward_hook(post))
        self.rec.__enter__()
        return self

    def __exit__(self, *exc):
        self.rec.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []
        return False


def build_graph(out, recorder=None):
    """The graph behind tensor(s) ``out`` as plain data: ``{"nodes": [...], "edges":
    [[src, dst], ...], "groups": [...]}``."""
    info = recorder.rec.info if recorder is not None else {}
    pnames = recorder.param_names if recorder is not None else {}
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    nodes, edges, ids = [], [], {}

    def nid(node):
        k = id(node)
        if k in ids:
            return ids[k], False
        ids[k] = len(nodes)
        nodes.append(None)
        return ids[k], True

    todo = []
    for i, t in enumerate(outs):
        o = len(nodes)
        nodes.append({"id": o, "label": f"output{i if len(outs) > 1 else ''}", "kind": "output",
                      "module": "", "details": {"shape": list(t._data.shape),
                                                "dtype": str(t._data.dtype)}})
        if t.grad_fn is not None:
            k, new = nid(t.grad_fn)
            edges.append([k, o])
            if new:
                todo.append(t.grad_fn)
    while todo:
        node = todo.pop()
        k = ids[id(node)]
        if isinstance(node, AccumulateGrad):
            t = node.tensor
            name = pnames.get(id(t))
            mod = ""
            if name and recorder is not None:
                mod = recorder.mod_labels.get(name.rsplit(".", 1)[0] if "." in name else "", "")
            nodes[k] = {"id": k, "label": name or "input", "kind": "param" if name else "leaf",
                        "module": mod,
                        "details": {"name": name or "(leaf tensor)", "shape": list(t._data.shape),
                                    "dtype": str(t._data.dtype), "node": "AccumulateGrad"}}
            continue
        from ..profiler.profiler import op_names
        fn = node.fn
        bwd = op_names(fn)[1] if hasattr(fn, "forward") else node.name()
        d = info.get(id(node), {})
        det = {"op": d.get("op", op_names(fn)[0].split("::")[-1]), "node": bwd}
        for key in ("input_shapes", "input_dtypes", "output_shapes", "output_dtypes"):
            if key in d:
                det[key] = d[key]
        det["module"] = d.get("module", "")
        nodes[k] = {"id": k, "label": det["op"], "kind": "op", "module": det["module"],
                    "details": det}
        for e in getattr(node, "next_edges", ()) or ():
            if e is None:
                continue
            src = e[0]
            j, new = nid(src)
            edges.append([j, k])
            if new:
                todo.append(src)
    groups = _groups(nodes)
    return {"nodes": nodes, "edges": edges, "groups": groups}


def _groups(nodes):
    """Module groups: one per module path with ops in it, nested by path; a leaf module
    (no sub-groups) starts collapsed."""
    paths = sorted({n["module"] for n in nodes if n["module"]})
    groups = []
    for p in paths:
        dotted = p.split(" (")[0]
        parent = None
        for q in paths:
            qd = q.split(" (")[0]
            if q != p and " (" in q and dotted.startswith(qd + ".") and (
                    parent is None or len(qd) > len(parent.split(" (")[0])):
                parent = q
        groups.append({"id": len(groups), "path": p, "parent": parent,
                       "members": [n["id"] for n in nodes if n["module"] == p]})
    by_path = {g["path"]: g for g in groups}
    for g in groups:
        g["parent"] = by_path[g["parent"]]["id"] if g["parent"] in by_path else None
    has_child = {g["parent"] for g in groups}
    for g in groups:
        g["collapsed"] = g["id"] not in has_child
    return groups


def layout(graph):
    """Layered layout: x by depth from the inputs (longest path), y by order in layer.
    Adds ``x``/``y`` to each node (pixels)."""
    n = len(graph["nodes"])
    preds = [[] for _ in range(n)]
    for s, d in graph["edges"]:
        preds[d].append(s)
    depth = [None] * n

    def dep(i):
        stack = [i]
        while stack:
            j = stack[-1]
            if depth[j] is not None:
                stack.pop()
                continue
            pend = [p for p in preds[j] if depth[p] is None]
            if pend:
                stack.extend(pend)
                continue
            depth[j] = 1 + max((depth[p] for p in preds[j]), default=-1)
            stack.pop()
        return depth[i]
    for i in range(n):
        dep(i)
    layers = {}
    for i in range(n):
        layers.setdefault(depth[i], []).append(i)
    for d, members in layers.items():
        members.sort(key=lambda i: (graph["nodes"][i]["module"], i))
        for k, i in enumerate(members):
            graph["nodes"][i]["x"] = 40 + 190 * d
            graph["nodes"][i]["y"] = 40 + 70 * k
    return graph


# ---------------------------------------------------------------- formats
def to_dot(graph):
    lines = ["digraph autograd {", '  rankdir=LR; node [shape=box, fontname="Helvetica"];']
    by_group = {}
    for nd in graph["nodes"]:
        by_group.setdefault(nd["module"], []).append(nd)
    for mod, members in by_group.items():
        indent = "  "
        if mod:
            lines.append(f'  subgraph "cluster_{_esc(mod)}" {{ label="{_esc(mod)}";')
            indent = "    "
        for nd in members:
            shape = {"op": "box", "param": "ellipse", "leaf": "ellipse", "output": "doubleoctagon"}[nd["kind"]]
            tip = _esc(json.dumps(nd["details"]))
            lines.append(f'{indent}n{nd["id"]} [label="{_esc(nd["label"])}", shape={shape}, '
                         f'tooltip="{tip}"];')
        if mod:
            lines.append("  }")
    for s, d in graph["edges"]:
        lines.append(f"  n{s} -> n{d};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(s):
    return str(s).replace("\\", "\\\\").replace('"', '\\"')


_COLORS = {"op": "#dbe9ff", "param": "#e6f5d0", "leaf": "#fff2cc", "output": "#f4cccc"}


def to_svg(graph):
    layout(graph)
    nodes = graph["nodes"]
    w = max((nd["x"] for nd in nodes), default=0) + 200
    h = max((nd["y"] for nd in nodes), default=0) + 80
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
           'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for g in graph["groups"]:
        mem = [nodes[i] for i in g["members"]]
        if not mem:
            continue
        x0 = min(m["x"] for m in mem) - 10
        y0 = min(m["y"] for m in mem) - 24
        x1 = max(m["x"] for m in mem) + 160
        y1 = max(m["y"] for m in mem) + 44
        out.append(f'<g class="group"><rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" '
                   f'rx="6" fill="none" stroke="#999" stroke-dasharray="4 3"/>'
                   f'<text x="{x0 + 4}" y="{y0 + 13}" fill="#666">{html.escape(g["path"])}</text></g>')
    for s, d in graph["edges"]:
        a, b = nodes[s], nodes[d]
        out.append(f'<line class="edge" x1="{a["x"] + 150}" y1="{a["y"] + 15}" x2="{b["x"]}" '
                   f'y2="{b["y"] + 15}" stroke="#555" marker-end="url(#arrow)"/>')
    for nd in nodes:
        title = html.escape(json.dumps(nd["details"]))
        out.append(f'<g class="node" data-id="{nd["id"]}"><title>{title}</title>'
                   f'<rect x="{nd["x"]}" y="{nd["y"]}" width="150" height="30" rx="4" '
                   f'fill="{_COLORS[nd["kind"]]}" stroke="#333"/>'
                   f'<text x="{nd["x"] + 75}" y="{nd["y"] + 19}" text-anchor="middle">'
                   f'{html.escape(nd["label"][:22])}</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_html(graph, title="deepseek autograd graph"):
    layout(graph)
    from ._html import GRAPH_PAGE
    data = json.dumps(graph).replace("</", "<\\/")
    return GRAPH_PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def show_graph(output_tensor_or_model, path="graph.html", input=None, format="html",
               title=None):
    """Write the autograd graph of a tensor (or of ``model(input)``) to ``path`` as
    ``format`` ``"html"`` (interactive, self-contained), ``"svg"`` or ``"dot"``.
    Returns the path; ``path=None`` returns the text instead."""
    from ..nn.module import Module
    obj = output_tensor_or_model
    rec = None
    if isinstance(obj, Module):
        if input is None:
            raise ValueError("show_graph(model): pass input=... (a tensor or a tuple of them)")
        with record_graph(obj) as rec:
            out = obj(*input) if isinstance(input, tuple) else obj(input)
        title = title or f"{type(obj).__name__} autograd graph"
    else:
        out = obj
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if not any(getattr(t, "grad_fn", None) is not None for t in outs):
        raise ValueError("show_graph: the output has no autograd graph (does it require grad?)")
    graph = build_graph(outs if len(outs) > 1 else outs[0], rec)
    for nd in graph["nodes"]:
        nd["details"].pop("_node", None)
    if format == "html":
        text = to_html(graph, title or "deepseek autograd graph")
    elif format == "svg":
        text = to_svg(graph)
    elif format == "dot":
        text = to_dot(graph)
    else:
        raise ValueError(f"show_graph: format must be 'html', 'svg' or 'dot', not {format!r}")
    if path is None:
        return text
    with open(path, "w") as f:
        f.write(text)
    return path
