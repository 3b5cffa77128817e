"""Observers of static post-training quantization: they watch a tensor during
calibration and give its symmetric int8 scale (amax / 127)."""
from collections import namedtuple

import numpy as np

from ..nn.module import Module
from .._tensor import Tensor


class _Observer(Module):
    def forward(self, x):
        a = x._data if isinstance(x, Tensor) else np.asarray(x)
        if a.size:
            self.observe(np.asarray(a, np.float32))
        return x

    def scale(self):
        amax = float(self.amax())
        return np.float32(amax / 127.0) if amax > 0 else np.float32(1.0)


class MinMaxObserver(_Observer):
    """Running min / max over all calibration batches."""

    def __init__(self):
        super().__init__()
        self.min_val, self.max_val = np.inf, -np.inf

    def observe(self, a):
        self.min_val = min(self.min_val, float(a.min()))
        self.max_val = max(self.max_val, float(a.max()))

    def amax(self):
        if self.min_val > self.max_val:
            raise RuntimeError("MinMaxObserver saw no data: run calibration batches "
                               "between prepare() and convert()")
        return max(abs(self.min_val), abs(self.max_val))

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"


class HistogramObserver(_Observer):
    """Histogram of |x| (bins re-ranged as the max grows); the scale covers the
    ``percentile`` of the values, clipping rare outliers."""

    def __init__(self, bins=2048, percentile=99.99):
        super().__init__()
        self.bins, self.percentile = bins, float(percentile)
        self.hist, self.hmax = np.zeros(bins, np.float64), 0.0

    def observe(self, a):
        a = np.abs(a.reshape(-1))
        m = float(a.max())
        if m > self.hmax:
            if self.hmax > 0 and self.hist.sum():   # re-bin the old counts onto the new range
                centers = (np.arange(self.bins) + 0.5) * (self.hmax / self.bins)
                self.hist = np.histogram(centers, self.bins, (0, m), weights=self.hist)[0]
            self.hmax = m
        if self.hmax > 0:
            self.hist += np.histogram(a, self.bins, (0, self.hmax))[0]

    def amax(self):
        total = self.hist.sum()
        if total == 0:
            if self.hmax == 0 and not total:
                raise RuntimeError("HistogramObserver saw no data: run calibration batches "
                                   "between prepare() and convert()")
        cdf = np.cumsum(self.hist) / total
        idx = int(np.searchsorted(cdf, self.percentile / 100.0))
        return min(self.hmax, (idx + 1) * self.hmax / self.bins)

    def extra_repr(self):
        return f"bins={self.bins}, percentile={self.percentile}, max={self.hmax}"


QConfig = namedtuple("QConfig", ["activation", "weight"])
QConfig.__doc__ = ("activation: a callable making the input observer; weight: 'per_channel' "
                   "(symmetric int8 per output channel, the only weight scheme)")
default_qconfig = QConfig(activation=MinMaxObserver, weight="per_channel")
histogram_qconfig = QConfig(activation=HistogramObserver, weight="per_channel")
