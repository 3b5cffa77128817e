"""Rank functions for tests/test_models_distributed.py (module-level: spawned ranks import
them). Each trains one of the zoo's models (BERT classifier, GPT-2 LM, ResNet) a few steps
on fixed global batches and returns its final full parameters, so a DDP or ZeRO run can be
compared with one process computing the same mean of the ranks' losses."""
import numpy as np

GLOBAL_BATCH = 4
STEPS = 2


def build(kind):
    """(model, the class FSDP wraps as one unit) with dropout off and a fixed seed."""
    import deepseek
    from deepseek import models
    deepseek.manual_seed(0)
    if kind == "bert":
        cfg = models.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                max_position_embeddings=16)
        return models.BertForSequenceClassification(cfg), models.bert.BertLayer
    if kind == "gpt2":
        cfg = models.GPT2Config(vocab_size=30, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return models.GPT2LMHeadModel(cfg), models.gpt2.GPT2Block
    cfg = models.resnet.ResNetConfig(block="basic", layers=[1, 1, 1, 1], num_classes=5)
    return models.resnet.ResNet(cfg), models.resnet.BasicBlock


def batch(kind, step):
    """The global batch of ``step`` (inputs, labels) as numpy arrays."""
    rng = np.random.default_rng(10 + step)
    if kind == "resnet":
        return (rng.standard_normal((GLOBAL_BATCH, 3, 16, 16)).astype(np.float32),
                rng.integers(0, 5, GLOBAL_BATCH))
    ids = rng.integers(1, 30, (GLOBAL_BATCH, 8))
    return ids, (rng.integers(0, 2, GLOBAL_BATCH) if kind == "bert" else ids)


def loss(model, kind, x, y):
    """The model's training loss on one shard."""
    import deepseek
    import deepseek.nn.functional as F
    if kind == "resnet":
        return F.cross_entropy(model(deepseek.tensor(x)), deepseek.tensor(y))
    return model(x, labels=y)["loss"]


def _optimizer(params):
    # SGD, not Adam: some gradients are zero in exact arithmetic (GPT-2's key bias: softmax
    # ignores a constant added to a row of scores) and Adam would scale their rounding
    # noise up to full-size steps that differ between any two summation orders
    import deepseek
    return deepseek.optim.SGD(params, lr=0.1, momentum=0.9)


def _params(model):
    return {k: np.array(v.detach().numpy(), copy=True) for k, v in model.named_parameters()}


def single(kind, world):
    """One process: each step's loss is the mean of the ``world`` shards' losses (what DDP's
    averaged gradient computes, BatchNorm statistics per shard included)."""
    model, _ = build(kind)
    opt = _optimizer(model.parameters())
    per = GLOBAL_BATCH // world
    for s in range(STEPS):
        x, y = batch(kind, s)
        opt.zero_grad()
        total = sum(loss(model, kind, x[r * per:(r + 1) * per], y[r * per:(r + 1) * per])
                    for r in range(world)) * (1.0 / world)
        total.backward()
        opt.step()
    return _params(model)


def train(rank, world, kind, stage):
    """``stage`` 0: DDP; 2 and 3: FSDP SHARD_GRAD_OP / FULL_SHARD with one unit per block."""
    import deepseek.distributed as dist
    from deepseek.distributed.fsdp import ModuleWrapPolicy
    dist.init_process_group()
    model, unit = build(kind)
    if stage == 0:
        runner = dist.DistributedDataParallel(model)
    else:
        runner = dist.FullyShardedDataParallel(
            model, sharding_strategy={2: "SHARD_GRAD_OP", 3: "FULL_SHARD"}[stage],
            auto_wrap_policy=ModuleWrapPolicy({unit}))
    opt = _optimizer(runner.parameters())
    per = GLOBAL_BATCH // world
    for s in range(STEPS):
        x, y = batch(kind, s)
        opt.zero_grad()
        loss(runner, kind, x[rank * per:(rank + 1) * per],
             y[rank * per:(rank + 1) * per]).backward()
        opt.step()
    if stage == 0:
        return _params(model)
    return {k: np.array(v.detach().numpy(), copy=True) for k, v in runner.state_dict().items()}
