"""ResNet (He et al.) in torchvision's layout: ``conv1 bn1 layer1..layer4 fc``, blocks with
``conv1 bn1 conv2 bn2 [conv3 bn3] [downsample.0 downsample.1]`` -- a torchvision
``resnet18().state_dict()`` (saved as safetensors) loads as is. Bottleneck blocks put the
stride on the 3x3 convolution (torchvision's "ResNet v1.5")."""
from .. import nn
from ..nn import functional as F
from ._config import Config

__all__ = ["ResNetConfig", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

_DEPTHS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
           50: ("bottleneck", [3, 4, 6, 3]), 101: ("bottleneck", [3, 4, 23, 3]),
           152: ("bottleneck", [3, 8, 36, 3])}


class ResNetConfig(Config):
    """``depth`` (18/34/50/101/152) or explicit ``block`` + ``layers``; ``num_classes``."""
    model_type = "resnet"
    defaults = dict(depth=50, block=None, layers=None, num_classes=1000, architectures=["ResNet"])

    def __init__(self, **kw):
        super().__init__(**kw)
        if self.block is None or self.layers is None:
            if self.depth not in _DEPTHS:
                raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {self.depth}")
            self.block, self.layers = _DEPTHS[self.depth][0], list(_DEPTHS[self.depth][1])


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


class ResNet(nn.Module):
    config_class = ResNetConfig

    def __init__(self, config=None, **kw):
        super().__init__()
        config = config if config is not None else ResNetConfig(**kw)
        self.config = config
        block = BasicBlock if config.block == "basic" else Bottleneck
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), config.layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, config.num_classes)

    def _make_layer(self, block, planes, n, stride):
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride,
                                           bias=False), nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(num_classes=1000):
    return ResNet(ResNetConfig(depth=18, num_classes=num_classes))


def resnet34(num_classes=1000):
    return ResNet(ResNetConfig(depth=34, num_classes=num_classes))


def resnet50(num_classes=1000):
    return ResNet(ResNetConfig(depth=50, num_classes=num_classes))


def resnet101(num_classes=1000):
    return ResNet(ResNetConfig(depth=101, num_classes=num_classes))


def resnet152(num_classes=1000):
    return ResNet(ResNetConfig(depth=152, num_classes=num_classes))
