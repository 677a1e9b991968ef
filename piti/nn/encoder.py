"""PITI's task-specific condition encoder, which takes the place of GLIDE's text transformer.

A CNN turns the condition image into a grid of tokens (official: 256x256 -> 16x16 tokens of
width 512), a learned positional embedding is added, a CLS token is APPENDED LAST (GLIDE reads
its pooled text vector from the last token, so GLIDE's ``transformer_proj`` can be reused), and
a pre-LN transformer with a final LayerNorm mixes them. Outputs, as GLIDE's text stack:
``xf_proj`` = the last (CLS) token (B, W) and ``xf_out`` = the grid tokens (B, W, N).
"""

import torch
import torch.nn as nn

from piti.errors import ConditionError
from piti.nn.layers import LayerNorm32
from piti.nn.text import Transformer

# What the condition image of each task is, for error messages.
CONDITION_NAMES = {
    "mask": "colour map (segmentation labels as RGB colours in [-1, 1])",
    "sketch": "sketch (distance-transformed edge map in [-1, 1])",
    "depth": "depth-and-normal map (normal and depth visualisations stacked, in [-1, 1])",
}


class ConditionCNN(nn.Module):
    """conv7x7 + IN + LReLU(0.2), then one stride-2 conv3x3 + IN + LReLU(0.2) per further width,
    then a plain conv3x3. Keys ``conv1..convK+1``, ``norm1..normK`` for K widths."""

    def __init__(self, in_channels: int, widths=(32, 64, 128, 256, 512)):
        super().__init__()
        self.depth = len(widths)
        prev = in_channels
        for i, w in enumerate(widths, start=1):
            conv = nn.Conv2d(prev, w, 7, padding=3) if i == 1 else nn.Conv2d(prev, w, 3, stride=2, padding=1)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"norm{i}", nn.InstanceNorm2d(w, affine=True))
            prev = w
        self.add_module(f"conv{self.depth + 1}", nn.Conv2d(prev, prev, 3, padding=1))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.depth + 1):
            x = self.act(getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x)))
        return getattr(self, f"conv{self.depth + 1}")(x)


class ConditionEncoder(nn.Module):
    """Condition image (B, C, S, S) -> ``dict(xf_proj=(B, W), xf_out=(B, W, N))``.

    Args:
        in_channels: channels of the condition (3 mask, 1 sketch, 6 depth).
        cond_size: side of the condition image (official 256).
        width, layers, heads: the transformer (official 512, 8, 8); ``width`` is also the last CNN width.
        cnn_channels: CNN widths; ``N = (cond_size / 2**(len-1))**2`` tokens.
        task: names the condition in error messages.
    """

    def __init__(
        self,
        in_channels,
        cond_size=256,
        width=512,
        layers=8,
        heads=8,
        cnn_channels=(32, 64, 128, 256, 512),
        task="mask",
        use_checkpoint=False,
    ):
        super().__init__()
        self.in_channels, self.cond_size, self.task = in_channels, cond_size, task
        grid = cond_size // 2 ** (len(cnn_channels) - 1)
        self.num_tokens = grid * grid
        self.cnn = ConditionCNN(in_channels, cnn_channels)
        self.transformer = Transformer(width, layers, heads, use_checkpoint=use_checkpoint)
        self.final_ln = LayerNorm32(width)
        # Left uninitialised (torch.empty) by the official code; a small normal like CLIP/ViT here.
        self.cls_token = nn.Parameter(torch.empty(1, 1, width))
        self.positional_embedding = nn.Parameter(torch.empty(1, self.num_tokens + 1, width))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.02)

    def check_condition(self, ref: torch.Tensor) -> None:
        """Raise ConditionError unless ``ref`` is (B, in_channels, cond_size, cond_size)."""
        c, s = self.in_channels, self.cond_size
        if not torch.is_tensor(ref) or ref.dim() != 4 or tuple(ref.shape[1:]) != (c, s, s):
            got = tuple(ref.shape) if torch.is_tensor(ref) else type(ref).__name__
            name = CONDITION_NAMES.get(self.task, "condition image")
            raise ConditionError(f"expected a {c}-channel {s}x{s} {name} as `ref`, shape (B, {c}, {s}, {s}); got {got}")

    def forward(self, ref: torch.Tensor) -> dict:
        self.check_condition(ref)
        x = self.cnn(ref).flatten(2).transpose(1, 2)  # (B, N, W) grid tokens, row-major
        x = x + self.positional_embedding[:, 1:]
        cls = (self.cls_token + self.positional_embedding[:, :1]).expand(x.shape[0], -1, -1)
        x = self.final_ln(self.transformer(torch.cat([x, cls], dim=1)))  # CLS appended last
        return dict(xf_proj=x[:, -1], xf_out=x[:, :-1].transpose(1, 2))
