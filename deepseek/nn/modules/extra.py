"""More layer classes of PyTorch's nn, thin wrappers over ``nn.functional``:
activations, transposed convolutions, upsampling, padding, instance norm, unpooling,
pixel shuffle, distances, KL divergence and other losses."""
import math

from ... import ops
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter
from .conv import _ConvNd, _nd_family, _ntuple


def _options_init(defaults, ignored=()):
    """``__init__`` of a parameterless Module: its options by position (in ``defaults``'
    order) or by keyword, kept as attributes; the ``ignored`` ones are accepted and dropped."""
    order = list(defaults)

    def __init__(self, *args, **kwargs):
        Module.__init__(self)
        vals = dict(defaults)
        vals.update(zip(order, args))
        vals.update(kwargs)
        for k, v in vals.items():
            if k not in ignored:
                setattr(self, k, v)
    return __init__


def _simple(name, fn, doc, **defaults):
    """A parameterless Module whose forward is ``fn(input, **options)``."""
    keys = list(defaults)

    def forward(self, input):
        return fn(input, **{k: getattr(self, k) for k in keys})

    def extra_repr(self):
        return ", ".join(f"{k}={getattr(self, k)}" for k in keys)
    return type(name, (Module,), {"__init__": _options_init(defaults), "forward": forward,
                                  "extra_repr": extra_repr, "__doc__": doc, "__module__": __name__})


Hardsigmoid = _simple("Hardsigmoid", F.hardsigmoid, "relu6(x + 3) / 6.", inplace=False)
Hardswish = _simple("Hardswish", F.hardswish, "x * relu6(x + 3) / 6.", inplace=False)
Softsign = _simple("Softsign", F.softsign, "x / (1 + |x|).")
Tanhshrink = _simple("Tanhshrink", F.tanhshrink, "x - tanh(x).")
SELU = _simple("SELU", F.selu, "Scaled ELU.", inplace=False)
CELU = _simple("CELU", F.celu, "Continuously differentiable ELU.", alpha=1.0, inplace=False)
Threshold = _simple("Threshold", F.threshold, "x where x > threshold, else value.", threshold=0.0,
                    value=0.0, inplace=False)
Hardshrink = _simple("Hardshrink", F.hardshrink, "x where |x| > lambd, else 0.", lambd=0.5)
Softshrink = _simple("Softshrink", F.softshrink, "Soft shrinkage by lambd.", lambd=0.5)
LogSigmoid = _simple("LogSigmoid", F.logsigmoid, "log(sigmoid(x)).")
GLU = _simple("GLU", F.glu, "a * sigmoid(b) of the halves along dim.", dim=-1)
RReLU = _simple("RReLU", lambda x, lower, upper, inplace: F.rrelu(x, lower, upper, False, inplace),
                "Randomized leaky ReLU (its eval-mode slope).", lower=1.0 / 8, upper=1.0 / 3, inplace=False)
PixelShuffle = _simple("PixelShuffle", F.pixel_shuffle, "(C r^2, H, W) -> (C, H r, W r).", upscale_factor=2)
PixelUnshuffle = _simple("PixelUnshuffle", F.pixel_unshuffle, "(C, H r, W r) -> (C r^2, H, W).",
                         downscale_factor=2)
ChannelShuffle = _simple("ChannelShuffle", lambda x, groups: ops.reshape(ops.transpose(ops.reshape(
    x, (x.shape[0], groups, x.shape[1] // groups) + tuple(x.shape[2:])), 1, 2), tuple(x.shape)),
    "Shuffle channels in groups.", groups=1)
AdaptiveMaxPool1d = _simple("AdaptiveMaxPool1d", F.adaptive_max_pool1d, "Adaptive max pooling.",
                            output_size=1, return_indices=False)
AdaptiveMaxPool2d = _simple("AdaptiveMaxPool2d", F.adaptive_max_pool2d, "Adaptive max pooling.",
                            output_size=1, return_indices=False)
LocalResponseNorm = _simple("LocalResponseNorm", F.local_response_norm, "Cross-channel normalisation.",
                            size=2, alpha=1e-4, beta=0.75, k=1.0)


class Softmax2d(Module):
    """Softmax over the channel dim of (N, C, H, W) or (C, H, W)."""

    def forward(self, input):
        return F.softmax(input, -3)


class PReLU(Module):
    """max(0, x) + a * min(0, x) with a learned ``a`` (one or per channel)."""

    def __init__(self, num_parameters=1, init=0.25, device=None, dtype=None):
        super().__init__()
        self.num_parameters, self.init = num_parameters, init
        self.weight = Parameter(ops.creation.full((num_parameters,), init, dtype=dtype, device=device))

    def forward(self, input):
        return F.prelu(input, self.weight)


class _ConvTransposeNd(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None):
        if padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for {type(self).__name__}')
        # swap in/out for the weight shape (in, out / groups, k...), then restore the names
        super().__init__(out_channels, in_channels, kernel_size, stride, padding, dilation, groups, False,
                         padding_mode, device, dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.transposed = True
        self.output_padding = _ntuple(output_padding, self._nd)
        w = self.weight
        self.weight = Parameter(ops.creation.empty(in_channels, out_channels // groups, *self.kernel_size,
                                                   dtype=w.dtype, device=w.device))
        if bias:
            self.bias = Parameter(ops.creation.empty(out_channels, dtype=w.dtype, device=w.device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if getattr(self, "bias", None) is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in:
                b = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -b, b)

    def _output_padding(self, input, output_size):
        if output_size is None:
            return self.output_padding
        nd = self._nd
        out = tuple(output_size)[-nd:]
        res = []
        for d in range(nd):
            base = ((input.shape[-nd + d] - 1) * self.stride[d] - 2 * self.padding[d]
                    + self.dilation[d] * (self.kernel_size[d] - 1) + 1)
            extra = out[d] - base
            if not 0 <= extra < max(self.stride[d], self.dilation[d]):
                raise ValueError(f"requested an output size of {out}, which is not reachable")
            res.append(extra)
        return tuple(res)

    def forward(self, input, output_size=None):
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self._nd - 1]
        return fn(input, self.weight, self.bias, self.stride, self.padding,
                  self._output_padding(input, output_size), self.groups, self.dilation)


ConvTranspose1d, ConvTranspose2d, ConvTranspose3d = _nd_family(
    _ConvTransposeNd, "ConvTranspose", ("1-d transposed convolution.", "2-d transposed convolution.",
                                        "3-d transposed convolution."))


class Upsample(Module):
    """``F.interpolate`` as a layer."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor

    def forward(self, input):
        return F.interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                             self.recompute_scale_factor)


class UpsamplingNearest2d(Upsample):
    """Nearest upsampling of 2-d inputs."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, "nearest")


class UpsamplingBilinear2d(Upsample):
    """Bilinear upsampling (align_corners=True) of 2-d inputs."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, "bilinear", True)


class _PadNd(Module):
    _mode, _nd = "constant", 1

    def __init__(self, padding, value=0.0):
        super().__init__()
        self.padding = _ntuple(padding, 2 * self._nd)
        self.value = value

    def forward(self, input):
        return F.pad(input, self.padding, self._mode, self.value if self._mode == "constant" else None)

    def extra_repr(self):
        return str(self.padding)


def _pad_class(name, mode, nd, const=False):
    def __init__(self, padding, value=0.0 if not const else None):
        _PadNd.__init__(self, padding, 0.0 if value is None else value)
    attrs = {"_mode": mode, "_nd": nd, "__module__": __name__, "__doc__": f"{mode} padding of {nd}-d inputs."}
    if name.startswith("Zero"):
        attrs["__init__"] = lambda self, padding: _PadNd.__init__(self, padding, 0.0)
    return type(name, (_PadNd,), attrs)


ZeroPad1d, ZeroPad2d, ZeroPad3d = (_pad_class(f"ZeroPad{n}d", "constant", n) for n in (1, 2, 3))
ConstantPad1d, ConstantPad2d, ConstantPad3d = (_pad_class(f"ConstantPad{n}d", "constant", n) for n in (1, 2, 3))
ReflectionPad1d, ReflectionPad2d, ReflectionPad3d = (_pad_class(f"ReflectionPad{n}d", "reflect", n) for n in (1, 2, 3))
ReplicationPad1d, ReplicationPad2d, ReplicationPad3d = (_pad_class(f"ReplicationPad{n}d", "replicate", n)
                                                        for n in (1, 2, 3))
CircularPad1d, CircularPad2d, CircularPad3d = (_pad_class(f"CircularPad{n}d", "circular", n) for n in (1, 2, 3))


class _InstanceNorm(Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 device=None, dtype=None):
        super().__init__()
        if track_running_stats:
            raise NotImplementedError("InstanceNorm(track_running_stats=True) is not implemented")
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        self.track_running_stats = False
        if affine:
            self.weight = Parameter(ops.creation.ones(num_features, dtype=dtype, device=device))
            self.bias = Parameter(ops.creation.zeros(num_features, dtype=dtype, device=device))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, input):
        unbatched = input.ndim == self._nd + 1
        x = ops.unsqueeze(input, 0) if unbatched else input
        out = F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        return ops.squeeze(out, 0) if unbatched else out


InstanceNorm1d, InstanceNorm2d, InstanceNorm3d = _nd_family(
    _InstanceNorm, "InstanceNorm", ("Instance normalisation of (N, C, L).",
                                    "Instance normalisation of (N, C, H, W).",
                                    "Instance normalisation of (N, C, D, H, W)."))


class _MaxUnpoolNd(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride if stride is not None else kernel_size, padding

    def forward(self, input, indices, output_size=None):
        fn = (F.max_unpool1d, F.max_unpool2d, F.max_unpool3d)[self._nd - 1]
        return fn(input, indices, self.kernel_size, self.stride, self.padding, output_size)


MaxUnpool1d, MaxUnpool2d, MaxUnpool3d = _nd_family(
    _MaxUnpoolNd, "MaxUnpool", ("Inverse of MaxPool1d.", "Inverse of MaxPool2d.", "Inverse of MaxPool3d."))


class CosineSimilarity(Module):
    """Cosine similarity along ``dim``."""

    def __init__(self, dim=1, eps=1e-8):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x1, x2):
        return F.cosine_similarity(x1, x2, self.dim, self.eps)


class PairwiseDistance(Module):
    """p-norm distance between rows."""

    def __init__(self, p=2.0, eps=1e-6, keepdim=False):
        super().__init__()
        self.norm, self.eps, self.keepdim = p, eps, keepdim

    def forward(self, x1, x2):
        return F.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)


class Fold(Module):
    """``F.fold`` as a layer."""

    def __init__(self, output_size, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__()
        self.output_size, self.kernel_size = output_size, kernel_size
        self.dilation, self.padding, self.stride = dilation, padding, stride

    def forward(self, input):
        return F.fold(input, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride)


class Unfold(Module):
    """``F.unfold`` as a layer."""

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__()
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride

    def forward(self, input):
        return F.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)


# PyTorch's deprecated loss arguments: still taken (by position too), without effect
_DEPRECATED_LOSS_ARGS = ("size_average", "reduce")


def _loss(name, fn, doc, **defaults):
    """A loss Module whose forward is ``fn(*inputs, **options)``."""
    keys = [k for k in defaults if k not in _DEPRECATED_LOSS_ARGS]

    def forward(self, *inputs):
        return fn(*inputs, **{k: getattr(self, k) for k in keys})
    return type(name, (Module,), {"__init__": _options_init(defaults, _DEPRECATED_LOSS_ARGS),
                                  "forward": forward, "__doc__": doc, "__module__": __name__})


KLDivLoss = _loss("KLDivLoss", F.kl_div, "KL divergence (input in log space).", size_average=None,
                  reduce=None, reduction="mean", log_target=False)
MarginRankingLoss = _loss("MarginRankingLoss", F.margin_ranking_loss, "Margin ranking loss.", margin=0.0,
                          size_average=None, reduce=None, reduction="mean")
HingeEmbeddingLoss = _loss("HingeEmbeddingLoss", F.hinge_embedding_loss, "Hinge embedding loss.",
                           margin=1.0, size_average=None, reduce=None, reduction="mean")
TripletMarginLoss = _loss("TripletMarginLoss", F.triplet_margin_loss, "Triplet margin loss.", margin=1.0,
                          p=2.0, eps=1e-6, swap=False, size_average=None, reduce=None, reduction="mean")
SoftMarginLoss = _loss("SoftMarginLoss", F.soft_margin_loss, "Soft margin loss.", size_average=None,
                       reduce=None, reduction="mean")
PoissonNLLLoss = _loss("PoissonNLLLoss", F.poisson_nll_loss, "Poisson NLL loss.", log_input=True, full=False,
                       size_average=None, eps=1e-8, reduce=None, reduction="mean")
GaussianNLLLoss = _loss("GaussianNLLLoss", F.gaussian_nll_loss, "Gaussian NLL loss.", full=False, eps=1e-6,
                        reduction="mean")
CosineEmbeddingLoss = _loss("CosineEmbeddingLoss", F.cosine_embedding_loss, "Cosine embedding loss.",
                            margin=0.0, size_average=None, reduce=None, reduction="mean")
