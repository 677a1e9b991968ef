"""GLIDE's transformer (CLIP-style, pre-LN), shared by the GLIDE text stack and the PITI encoder.

State-dict names follow the official ``xf.py``: ``resblocks.N.{attn.c_qkv, attn.c_proj, ln_1,
mlp.c_fc, mlp.c_proj, ln_2}``. No attention mask is used anywhere, as in GLIDE.
"""

import torch
import torch.nn as nn

from piti.nn.layers import LayerNorm32, attention, maybe_checkpoint


class MultiheadAttention(nn.Module):
    """Self-attention whose fused ``c_qkv`` output is laid out per head as (head, {q,k,v}, ch)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = self.c_qkv(x).view(b, n, self.heads, 3 * w // self.heads)  # (B, T, heads, 3*ch)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)  # each (B, heads, T, ch)
        h = attention(q, k, v).transpose(1, 2).reshape(b, n, w)
        return self.c_proj(h)


class MLP(nn.Module):
    """Two-layer perceptron ``width -> 4*width -> width`` with exact GELU."""

    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x += attn(ln_1(x)); x += mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of ``layers`` residual attention blocks over (B, T, width) sequences."""

    def __init__(self, width: int, layers: int, heads: int, use_checkpoint: bool = False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = maybe_checkpoint(block, x, enabled=self.use_checkpoint)
        return x
