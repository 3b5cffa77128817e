"""The layer classes of deepseek.nn."""
from ..module import Module
from .linear import Identity, Linear, Bilinear
from .conv import Conv1d, Conv2d, Conv3d
from .activation import (ReLU, ReLU6, LeakyReLU, ELU, GELU, SiLU, Mish, Tanh, Sigmoid, Softplus,
                         Hardtanh, Softmax, LogSoftmax, Softmin, MultiheadAttention)
from .normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm, GroupNorm, RMSNorm
from .pooling import (MaxPool1d, MaxPool2d, MaxPool3d, AvgPool1d, AvgPool2d, AvgPool3d,
                      AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d)
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from .sparse import Embedding
from .flatten import Flatten, Unflatten
from .container import Sequential, ModuleList, ModuleDict, ParameterList, ParameterDict
from .loss import (CrossEntropyLoss, NLLLoss, MSELoss, L1Loss, SmoothL1Loss, HuberLoss, BCELoss,
                   BCEWithLogitsLoss)
from .transformer import TransformerEncoderLayer, TransformerEncoder
from .rnn import RNNBase, RNN, LSTM, GRU, RNNCellBase, RNNCell, LSTMCell, GRUCell
from .transformer_decoder import TransformerDecoderLayer, TransformerDecoder, Transformer
from .extra import (Hardsigmoid, Hardswish, Softsign, Tanhshrink, SELU, CELU, Threshold, Hardshrink,
                    Softshrink, LogSigmoid, GLU, RReLU, PReLU, Softmax2d, PixelShuffle, PixelUnshuffle,
                    ChannelShuffle, AdaptiveMaxPool1d, AdaptiveMaxPool2d, LocalResponseNorm,
                    ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, Upsample, UpsamplingNearest2d,
                    UpsamplingBilinear2d, ZeroPad1d, ZeroPad2d, ZeroPad3d, ConstantPad1d, ConstantPad2d,
                    ConstantPad3d, ReflectionPad1d, ReflectionPad2d, ReflectionPad3d, ReplicationPad1d,
                    ReplicationPad2d, ReplicationPad3d, CircularPad1d, CircularPad2d, CircularPad3d,
                    InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, MaxUnpool1d, MaxUnpool2d, MaxUnpool3d,
                    CosineSimilarity, PairwiseDistance, Fold, Unfold, KLDivLoss, MarginRankingLoss,
                    HingeEmbeddingLoss, TripletMarginLoss, SoftMarginLoss, PoissonNLLLoss, GaussianNLLLoss,
                    CosineEmbeddingLoss)
