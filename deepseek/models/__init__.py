"""Pretrained model architectures, in the parameter layouts their checkpoints use.

* BERT family (Hugging Face names): :class:`BertModel`, :class:`BertForSequenceClassification`,
  :func:`mean_pooling`, :class:`SentenceEncoder`, with :class:`WordPieceTokenizer`.
* GPT-2 (Hugging Face names): :class:`GPT2LMHeadModel` with ``generate`` (greedy,
  temperature, top-k, top-p, KV cache), with :class:`ByteLevelBPETokenizer`.
* ResNet-18/34/50/101/152 (torchvision names): :func:`resnet18`, :func:`resnet50`, ...

:data:`ARCHITECTURES` maps the names ``config.json`` gives in ``architectures`` (or the
hub index's ``architecture``) to ``(model class, config class)``; :func:`register_architecture`
adds one. ``deepseek.hub.load`` builds models through it.
"""
from .bert import (BertConfig, BertModel, BertForSequenceClassification, mean_pooling,
                   SentenceEncoder)
from .gpt2 import GPT2Config, GPT2Model, GPT2LMHeadModel
from .resnet import ResNetConfig, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .tokenizers import WordPieceTokenizer, ByteLevelBPETokenizer, load_tokenizer

__all__ = ["BertConfig", "BertModel", "BertForSequenceClassification", "mean_pooling",
           "SentenceEncoder", "GPT2Config", "GPT2Model", "GPT2LMHeadModel", "ResNetConfig",
           "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "WordPieceTokenizer", "ByteLevelBPETokenizer", "load_tokenizer", "ARCHITECTURES",
           "register_architecture"]

ARCHITECTURES = {
    "BertModel": (BertModel, BertConfig),
    "BertForSequenceClassification": (BertForSequenceClassification, BertConfig),
    "GPT2Model": (GPT2Model, GPT2Config),
    "GPT2LMHeadModel": (GPT2LMHeadModel, GPT2Config),
    "ResNet": (ResNet, ResNetConfig),
}


def register_architecture(name, model_class, config_class):
    """Make ``name`` (as in ``config.json``'s ``architectures``) buildable by the hub."""
    ARCHITECTURES[name] = (model_class, config_class)
