"""Output shared by the benchmark scripts."""
import json


def write_json(path, results, indent=1):
    """Write ``results`` as JSON to ``path`` (the scripts' ``--json`` option); nothing
    when ``path`` is None or empty (the option was not given)."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=indent)
