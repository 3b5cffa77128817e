"""deepseek.viz: look at what the engine does.

- :func:`show_graph` -- the autograd graph of a tensor or of ``model(input)`` as an
  interactive self-contained HTML page (pan, zoom, click for op, shapes, dtypes and
  module path; modules collapse into boxes), SVG (laid out here, no graphviz) or DOT.
- :func:`trace_viewer` -- a small self-contained HTML viewer for a Chrome trace (the
  profiler's ``export_chrome_trace`` or a merged ``DEEPSEEK_TIMELINE``): one lane per
  process row and thread.
"""
from .graph import show_graph, build_graph, record_graph, to_dot, to_svg, to_html  # noqa: F401
from .trace_view import trace_viewer  # noqa: F401

__all__ = ["show_graph", "build_graph", "record_graph", "to_dot", "to_svg", "to_html",
           "trace_viewer"]
