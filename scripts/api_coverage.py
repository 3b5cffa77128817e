"""Which of PyTorch's public names deepseek has: writes docs/api_coverage.md.

Compares dir(torch), dir(torch.Tensor), dir(torch.nn), dir(torch.nn.functional),
dir(torch.optim), dir(torch.cuda) and dir(torch.utils.data) with deepseek's (PyTorch
must be installed). Within each namespace the names in COMMON (the ones typical
training programs use, listed by hand from nanoGPT, minGPT, the pytorch/examples
scripts and torchvision models) come first, then the rest alphabetically.

    python scripts/api_coverage.py            # rewrite docs/api_coverage.md
    python scripts/api_coverage.py --check    # exit 1 if the file is out of date
"""
import argparse
import os
import sys
import warnings

COMMON = {
    "torch": "tensor zeros ones randn rand randint arange linspace full empty zeros_like ones_like "
             "randn_like rand_like full_like cat stack split chunk where clamp max min sum mean std var "
             "exp log sqrt tanh sigmoid softmax log_softmax matmul bmm mm einsum topk sort argsort argmax "
             "argmin flip roll narrow multinomial manual_seed no_grad enable_grad inference_mode "
             "set_grad_enabled save load from_numpy as_tensor is_tensor device dtype float float32 float16 "
             "half bfloat16 long int int64 bool float64 double cuda backends compile autocast "
             "Generator cumsum tril triu outer allclose equal isnan isinf isfinite abs pow erf "
             "floor ceil round eq ne lt gt le ge logical_not norm unique nonzero gather scatter "
             "masked_fill repeat_interleave diag flatten reshape squeeze unsqueeze permute transpose "
             "broadcast_to meshgrid finfo iinfo set_float32_matmul_precision set_printoptions".split(),
    "torch.Tensor": "size shape view reshape permute transpose contiguous to cuda cpu float long half "
                    "item tolist numpy detach clone backward grad requires_grad requires_grad_ zero_ "
                    "fill_ copy_ sum mean max min argmax softmax masked_fill view_as expand repeat unsqueeze "
                    "squeeze flatten split chunk topk sort eq ne gt lt type_as new_zeros new_ones numel dim "
                    "ndim dtype device is_cuda normal_ uniform_ data t T mT __format__ __repr__ "
                    "__getitem__ __setitem__ __add__ __mul__ __matmul__ __mod__ __floordiv__ pow exp log "
                    "sqrt abs clamp tanh sigmoid relu float_power cumsum gather scatter_ index_select".split(),
    "torch.nn": "Module Linear Embedding LayerNorm Dropout Conv2d Conv1d BatchNorm2d BatchNorm1d ReLU GELU "
                "Tanh Sigmoid Sequential ModuleList ModuleDict Parameter CrossEntropyLoss MSELoss NLLLoss "
                "MaxPool2d AdaptiveAvgPool2d Flatten LSTM GRU RNN MultiheadAttention TransformerEncoder "
                "TransformerEncoderLayer TransformerDecoder TransformerDecoderLayer Transformer Identity "
                "ConvTranspose2d Upsample init functional utils parallel SiLU Softmax LogSoftmax "
                "BCEWithLogitsLoss BCELoss L1Loss GroupNorm".split(),
    "torch.nn.functional": "relu gelu silu softmax log_softmax cross_entropy nll_loss mse_loss linear "
                           "conv2d max_pool2d avg_pool2d adaptive_avg_pool2d dropout embedding layer_norm "
                           "batch_norm pad interpolate normalize one_hot scaled_dot_product_attention "
                           "binary_cross_entropy binary_cross_entropy_with_logits tanh sigmoid leaky_relu "
                           "elu softplus kl_div l1_loss smooth_l1_loss cosine_similarity".split(),
    "torch.optim": "SGD Adam AdamW RMSprop Adagrad Adadelta Adamax NAdam RAdam LBFGS Optimizer "
                   "lr_scheduler".split(),
    "torch.cuda": "is_available device_count manual_seed manual_seed_all synchronize is_bf16_supported "
                  "amp empty_cache current_device get_device_name set_device memory_allocated "
                  "max_memory_allocated".split(),
    "torch.utils.data": "DataLoader Dataset TensorDataset random_split Sampler RandomSampler "
                        "SequentialSampler DistributedSampler IterableDataset Subset ConcatDataset "
                        "default_collate get_worker_info BatchSampler WeightedRandomSampler".split(),
}


def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_") or n in {"__format__", "__repr__", "__getitem__",
                                                                   "__setitem__", "__add__", "__mul__",
                                                                   "__matmul__", "__mod__", "__floordiv__"}}


def _namespaces():
    import torch
    import torch.nn.functional
    import torch.utils.data
    import deepseek as ds
    out = [("torch", torch, ds), ("torch.Tensor", torch.Tensor, ds.Tensor), ("torch.nn", torch.nn, ds.nn),
           ("torch.nn.functional", torch.nn.functional, ds.nn.functional), ("torch.optim", torch.optim, ds.optim),
           ("torch.cuda", torch.cuda, ds.cuda)]
    try:
        import deepseek.data as dd
    except Exception:  # pragma: no cover
        dd = None
    out.append(("torch.utils.data", torch.utils.data, dd))
    return out


def _has(obj, name):
    if obj is None:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hasattr(obj, name)
    except Exception:
        return False


def build():
    """The markdown text of the coverage table."""
    lines = ["# PyTorch API coverage", "",
             "Generated by `python scripts/api_coverage.py` from the installed PyTorch "
             "(`dir()` of each namespace, private names excluded, deprecated type aliases and "
             "submodules included). `yes` means deepseek has an attribute of that name; "
             "semantics are tested where listed in tests/test_api_*.py, tests/test_op_table.py "
             "and tests/test_nn_*.py. Common names (those typical training programs use) come "
             "first in each section. `torch.utils.data` is compared with `deepseek.data`.", ""]
    summary, sections = [], []
    for label, ref, ours in _namespaces():
        names = sorted(_public(ref))
        common = [n for n in COMMON.get(label, []) if n in names]
        rest = [n for n in names if n not in set(common)]
        have = {n for n in names if _has(ours, n)}
        c_have = sum(n in have for n in common)
        summary.append(f"| `{label}` | {len(have)} / {len(names)} ({100 * len(have) / max(len(names), 1):.1f}%) "
                       f"| {c_have} / {len(common)} |")
        sec = [f"## `{label}`", "", f"{len(have)} of {len(names)} names; {c_have} of the {len(common)} common ones.",
               "", "| name | common | deepseek |", "|---|---|---|"]
        for n in common:
            sec.append(f"| `{n}` | yes | {'yes' if n in have else '**missing**'} |")
        missing = [n for n in rest if n not in have]
        present = [n for n in rest if n in have]
        sec.append("")
        sec.append(f"Other names present ({len(present)}): " + ", ".join(f"`{n}`" for n in present))
        sec.append("")
        sec.append(f"Other names missing ({len(missing)}): " + ", ".join(f"`{n}`" for n in missing))
        sec.append("")
        sections.append("\n".join(sec))
    lines += ["| namespace | names deepseek has | common names |", "|---|---|---|"] + summary + [""]
    return "\n".join(lines + sections) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "api_coverage.md"))
    p.add_argument("--check", action="store_true", help="exit 1 when the file differs from a fresh build")
    a = p.parse_args(argv)
    text = build()
    if a.check:
        with open(a.out) as f:
            same = f.read() == text
        print("up to date" if same else f"{a.out} is out of date: run scripts/api_coverage.py")
        return 0 if same else 1
    with open(a.out, "w") as f:
        f.write(text)
    print(text.split("\n\n## ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
