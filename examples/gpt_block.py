"""A GPT-style transformer block in deepseek.nn: pre-LayerNorm causal self-attention
(``F.scaled_dot_product_attention``) and a GELU MLP, each added to the residual.

The jit tests trace and compile it, and ``scripts/bench_jit.py`` times its trace and
compile; both import it from here so that they exercise the same block.

    from gpt_block import GPTBlock     # with examples/ on sys.path
    y = GPTBlock(d=256, h=4)(deepseek.randn(1, 64, 256))
"""
from deepseek import nn
from deepseek.nn import functional as F


class GPTBlock(nn.Module):
    """One block on (B, T, d): ``x + attn(ln1(x))``, then ``+ mlp_scale * mlp(ln2(x))``.

    ``approximate`` is F.gelu's ("none" or "tanh"); ``mlp_scale`` other than 1 multiplies
    the MLP branch (the jit tests use both to reach more fusion patterns)."""

    def __init__(self, d=256, h=4, approximate="none", mlp_scale=1.0):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.h, self.approximate, self.mlp_scale = h, approximate, mlp_scale

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.reshape(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, C))
        mlp = self.out(F.gelu(self.fc(self.ln2(x)), approximate=self.approximate))
        # no multiply by 1.0: the traced graph of the plain block keeps one node less
        return x + (mlp if self.mlp_scale == 1.0 else mlp * self.mlp_scale)
