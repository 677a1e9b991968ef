"""GLIDE's UNet (ADM with scale-shift norm and text-conditioned attention), key-for-key with the
official checkpoints.

The conditioning enters twice, as in GLIDE and PITI:
  * globally: ``emb = time_embed(t) + transformer_proj(xf_proj)`` drives every ResBlock's
    AdaGN, ``GN(h) * (1 + scale) + shift``;
  * spatially: every attention block projects ``xf_out`` with ``encoder_kv`` and PREPENDS those
    keys/values to the spatial ones, so each pixel attends over [condition tokens, pixels].

Project option ``cond_hint_channels`` (not official): the condition image itself enters a third way, resized to
``x_t``'s side and added to the first block's output by :class:`ConditionHint`, which starts at zero.

The super-resolution variant (``super_res=True``) bilinearly upsamples ``low_res`` to the size of
``x_t`` (``align_corners=False``) and concatenates it after ``x_t`` (6 input channels).

Sampling option :class:`FeatureCache` (not official): the deep features reused across steps (DeepCache).
"""

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from piti.errors import ConditionError, ConfigError
from piti.nn.layers import Dropout, GroupNorm32, attention, maybe_checkpoint, timestep_embedding, zero_module


class Downsample(nn.Module):
    """Stride-2 3x3 conv (``op``), used between levels when ``resblock_updown`` is off."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv (``conv``), used between levels when ``resblock_updown`` is off."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding ``emb``; optionally halves or doubles the resolution.

    Keys: ``in_layers.{0 norm, 2 conv}``, ``emb_layers.1``, ``out_layers.{0 norm, 3 conv}``,
    ``skip_connection`` (1x1 conv, only when the channel count changes).
    """

    def __init__(
        self,
        channels,
        emb_channels,
        dropout,
        out_channels=None,
        use_scale_shift_norm=True,
        up=False,
        down=False,
        use_checkpoint=False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            GroupNorm32(channels, swish=True), nn.Identity(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = "up" if up else "down" if down else None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels, swish=not use_scale_shift_norm),
            nn.SiLU() if use_scale_shift_norm else nn.Identity(),
            Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self._forward, x, emb, enabled=self.use_checkpoint)

    def _resample(self, h):
        # Parameter-free resampling of both branches, applied between the norm and the conv.
        if self.updown == "up":
            return F.interpolate(h, scale_factor=2, mode="nearest")
        return F.avg_pool2d(h, kernel_size=2, stride=2)

    def _forward(self, x, emb):
        if self.updown:
            h = self._resample(self.in_layers[:-1](x))
            x = self._resample(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)  # AdaGN: GN(h) * (1 + scale) + shift
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


@functools.lru_cache(maxsize=32)  # the same few (size, device) pairs at every step of every block
def grid_locality_bias(height: int, width: int, num_tokens: int, alpha: float, device=None) -> torch.Tensor:
    """Additive attention-logit bias (HW, N) from each pixel to a square grid of N condition tokens.

    ``b_ij = -alpha * d_ij**2 - logsumexp_j'(-alpha * d_ij'**2) + log(HW)``, with ``d_ij`` the distance
    between the centres of pixel i and token j in token cells. The first term makes a pixel prefer the
    tokens that cover it; the rest normalises the prior so that, at zero logits, the N tokens together
    get as much of each pixel's attention as the HW pixels together. Why: a small decoder trained for
    minutes does not learn which grid token belongs to which pixel from content alone (its queries carry
    no position), so a spatial condition barely reached it (checkpoints/toy/README.md). Cached: do not
    modify the returned tensor.
    """
    grid = math.isqrt(num_tokens)
    if grid * grid != num_tokens:
        raise ConditionError(f"cond_locality needs a square grid of condition tokens, got {num_tokens} tokens")
    centre = lambda n: (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n  # noqa: E731
    ty, tx = torch.meshgrid(centre(grid), centre(grid), indexing="ij")
    py, px = torch.meshgrid(centre(height), centre(width), indexing="ij")
    d2 = ((py.reshape(-1, 1) - ty.reshape(1, -1)) ** 2 + (px.reshape(-1, 1) - tx.reshape(1, -1)) ** 2) * grid**2
    logits = -alpha * d2
    return logits - logits.logsumexp(dim=1, keepdim=True) + math.log(height * width)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels, extended by keys/values from the condition tokens.

    ``qkv``, ``encoder_kv`` and ``proj_out`` are 1x1 Conv1d layers (weights (out, in, 1)) whose
    outputs use the legacy per-head layout (head, {q,k,v}, ch) and (head, {k,v}, ch).
    """

    def __init__(
        self, channels, num_heads=1, num_head_channels=-1, encoder_channels=512, use_checkpoint=False, cond_locality=0.0
    ):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.cond_locality = cond_locality
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.encoder_kv = nn.Conv1d(encoder_channels, 2 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, xf_out: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self._forward, x, xf_out, enabled=self.use_checkpoint)

    def _forward(self, x, xf_out):
        b, c, height, width = x.shape
        heads, ch = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm(x).view(b, c, -1)).view(b, heads, 3 * ch, -1)
        q, k, v = qkv.transpose(2, 3).chunk(3, dim=-1)  # each (B, heads, HW, ch)
        ekv = self.encoder_kv(xf_out.to(x.dtype)).view(b, heads, 2 * ch, -1)
        ek, ev = ekv.transpose(2, 3).chunk(2, dim=-1)  # each (B, heads, N, ch)
        k, v = torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2)  # condition tokens first
        bias = None
        if self.cond_locality:
            token_bias = grid_locality_bias(height, width, ek.shape[2], self.cond_locality, device=x.device)
            bias = F.pad(token_bias, (0, height * width)).to(q.dtype)  # no bias among the pixels
        h = attention(q, k, v, bias).transpose(2, 3).reshape(b, c, -1)
        return x + self.proj_out(h).view(b, c, height, width)


class ConditionHint(nn.Module):
    """The condition image (B, C, S, S) -> a (B, channels, H, W) addition to the first block's output, as
    ControlNet's hint: area-resized to H x W, conv3x3 + SiLU, then a zero-initialised conv3x3, so that a model
    without it loads and at first predicts exactly as before."""

    def __init__(self, in_channels: int, channels: int, hidden: int = 32):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv_out = zero_module(nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, hint: torch.Tensor, size) -> torch.Tensor:
        hint = F.interpolate(hint, size=size, mode="area") if tuple(hint.shape[2:]) != tuple(size) else hint
        return self.conv_out(F.silu(self.conv_in(hint)))


class FeatureCache:
    """Reuse of the UNet's deep features across the calls of one sampling run (DeepCache, Ma et al., CVPR 2024).

    Every ``interval``-th call runs the whole UNet and keeps the features that enter its last ``branch`` output
    blocks; each call between runs only the first ``branch`` input blocks (their skips) and those output blocks, on
    the kept features. The deep features change slowly from one step to the next, so a reusing call costs only the
    outer blocks. Calls at ``t / num_timesteps >= tmax`` (the network's timesteps, where the layout is drawn) and
    calls whose batch size differs from the kept features' run whole. One cache per sampling run.
    """

    def __init__(self, interval: int, branch: int, tmax: float = 1.0, num_timesteps: int = 1000):
        if interval < 1 or branch < 1:
            raise ConfigError(f"a feature cache needs interval >= 1 and branch >= 1, got {interval} and {branch}")
        self.interval, self.branch, self.tmax, self.num_timesteps = int(interval), int(branch), tmax, num_timesteps
        self.features, self.calls, self.whole = None, 0, 0  # kept features, calls since they were kept, whole calls

    def reuse(self, x: torch.Tensor, t: torch.Tensor) -> bool:
        """Whether this call of the UNet on ``x`` at timesteps ``t`` may reuse the kept features; counts the call."""
        fits = self.features is not None and self.features.shape[0] == x.shape[0] and self.calls % self.interval
        fits = fits and float(t[0]) / self.num_timesteps < self.tmax
        self.calls = self.calls + 1 if fits else 1
        self.whole += not fits
        return bool(fits)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers; ResBlocks get ``emb``, attention blocks get ``xf_out``, others only ``h``."""

    def forward(self, h, emb, xf_out):
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, xf_out)
            else:
                h = layer(h)
        return h


class UNet(nn.Module):
    """GLIDE's UNet with ``transformer_proj`` and an ``encoder_kv`` in every attention block.

    Args:
        image_size: side of ``x_t`` in pixels.
        model_channels: base width (official option ``num_channels``).
        channel_mult: width multiplier of each level; one level per resolution.
        attention_ds: downsampling factors (``image_size // resolution``) that get attention.
        xf_width: width of the condition tokens (text transformer or PITI encoder).
        super_res: take ``low_res`` and concatenate its upsampled copy after ``x_t``.
        out_channels: 6 = epsilon and the learned-variance interpolation value v.
        cond_hint_channels: channels of the condition image that :class:`ConditionHint` adds (0 = none, official).
    """

    def __init__(
        self,
        image_size,
        model_channels,
        num_res_blocks,
        channel_mult,
        attention_ds,
        num_heads=1,
        num_head_channels=-1,
        dropout=0.0,
        use_scale_shift_norm=True,
        resblock_updown=True,
        xf_width=512,
        super_res=False,
        out_channels=6,
        use_checkpoint=False,
        cond_locality=0.0,
        cond_hint_channels=0,
    ):
        super().__init__()
        self.image_size = image_size
        self.model_channels = model_channels
        self.super_res = super_res
        self.num_levels = len(channel_mult)
        in_channels = 6 if super_res else 3
        emb_ch = 4 * model_channels
        block = dict(
            emb_channels=emb_ch,
            dropout=dropout,
            use_scale_shift_norm=use_scale_shift_norm,
            use_checkpoint=use_checkpoint,
        )
        attn = dict(
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            encoder_channels=xf_width,
            use_checkpoint=use_checkpoint,
            cond_locality=cond_locality,
        )

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.transformer_proj = nn.Linear(xf_width, emb_ch)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        self.hint_in = ConditionHint(cond_hint_channels, ch) if cond_hint_channels else None
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, out_channels=int(mult * model_channels), **block)]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, **attn))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = ResBlock(ch, down=True, **block) if resblock_updown else Downsample(ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, **block), AttentionBlock(ch, **attn), ResBlock(ch, **block)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), out_channels=int(mult * model_channels), **block)]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, **attn))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, up=True, **block) if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch, swish=True),
            nn.Identity(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, low_res=None) -> torch.Tensor:
        """Raise ConditionError on a badly shaped ``x_t``/``t``/``low_res``; return ``t`` as a (B,) tensor."""
        s = self.image_size
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (s, s):
            raise ConditionError(f"expected x_t of shape (B, 3, {s}, {s}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if tuple(t.shape) != (x.shape[0],):
            raise ConditionError(f"expected timesteps t of shape ({x.shape[0]},) or a scalar, got {tuple(t.shape)}")
        if self.super_res:
            if low_res is None:
                raise ConditionError("this super-resolution model needs `low_res`, a (B, 3, h, w) image in [-1, 1]")
            if low_res.dim() != 4 or low_res.shape[:2] != x.shape[:2]:
                raise ConditionError(f"expected low_res of shape ({x.shape[0]}, 3, h, w), got {tuple(low_res.shape)}")
        elif low_res is not None:
            raise ConditionError("`low_res` was given to a model that is not a super-resolution model")
        return t

    def check_hint(self, x: torch.Tensor, hint) -> None:
        """Raise ConditionError unless ``hint`` is a (B, C, S, S) condition image exactly when the model takes one."""
        channels = self.hint_in.conv_in.in_channels if self.hint_in is not None else 0
        fits = hint is None or (hint.dim() == 4 and hint.shape[:2] == (len(x), channels))
        if (hint is None) == (channels == 0) and fits:
            return
        want = f"a hint ({len(x)}, {channels}, S, S)" if channels else "no hint"
        got = None if hint is None else tuple(hint.shape)
        raise ConditionError(f"this model takes {want} (the condition image, cond_hint), got {got}")

    def forward(self, x, t, xf_proj, xf_out, low_res=None, hint=None, cache: FeatureCache | None = None):
        """Predict (B, 6, H, W): epsilon and the variance interpolation value v.

        Args:
            x: ``x_t``, (B, 3, H, W).
            t: timesteps as the network receives them, (B,) or a scalar.
            xf_proj: pooled condition vector (B, xf_width), projected here by ``transformer_proj``.
            xf_out: condition tokens (B, xf_width, N), turned into keys/values by each ``encoder_kv``.
            low_res: (B, 3, h, w) image for super-resolution models.
            hint: the condition image (B, C, S, S) of a model with ``cond_hint_channels`` (None otherwise).
            cache: a :class:`FeatureCache` shared by the calls of one sampling run (None: every call whole).
        """
        t = self.check_inputs(x, t, low_res)
        if cache is not None and cache.branch > len(self.input_blocks):
            raise ConfigError(f"cache_branch {cache.branch} exceeds this UNet's {len(self.input_blocks)} input blocks")
        self.check_hint(x, hint)
        b, w = x.shape[0], self.transformer_proj.in_features
        if (
            not torch.is_tensor(xf_proj)
            or not torch.is_tensor(xf_out)
            or tuple(xf_proj.shape) != (b, w)
            or xf_out.dim() != 3
            or tuple(xf_out.shape[:2]) != (b, w)
        ):
            got = [tuple(v.shape) if torch.is_tensor(v) else v for v in (xf_proj, xf_out)]
            raise ConditionError(
                f"expected the encoded condition xf_proj ({b}, {w}) and xf_out ({b}, {w}, N) "
                f"for a batch of {b}, got {got[0]} and {got[1]}"
            )
        if self.super_res:
            upsampled = F.interpolate(low_res.to(x.dtype), size=x.shape[2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, upsampled], dim=1)
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        emb = emb + self.transformer_proj(xf_proj).to(emb.dtype)
        reuse = cache is not None and cache.reuse(x, t)
        outer = len(self.output_blocks) - cache.branch if cache is not None else -1  # first output block of the branch
        hs = []
        h = x
        for i, module in enumerate(self.input_blocks[: cache.branch] if reuse else self.input_blocks):
            h = module(h, emb, xf_out)
            if i == 0 and hint is not None:
                h = h + self.hint_in(hint.to(h.dtype), h.shape[2:])
            hs.append(h)
        h = cache.features if reuse else self.middle_block(h, emb, xf_out)
        for j in range(outer if reuse else 0, len(self.output_blocks)):
            if j == outer and not reuse:
                cache.features = h
            h = self.output_blocks[j](torch.cat([h, hs.pop()], dim=1), emb, xf_out)
        return self.out(h)
