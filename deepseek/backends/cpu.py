"""``deepseek.backends.cpu``."""


def get_cpu_capability():
    """The SIMD level numpy was built for (its highest baseline feature), e.g. 'AVX2'."""
    try:
        import numpy as np
        feats = np.__config__.CONFIG["SIMD Extensions"]["baseline"]
        return str(feats[-1]) if feats else "DEFAULT"
    except Exception:
        return "DEFAULT"
