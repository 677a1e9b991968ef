"""The two complete networks: GLIDE (text-to-image) and PITI (condition image-to-image).

Both return (B, 6, H, W) = [epsilon, v] for ``x_t`` at timestep ``t`` and share one protocol, so
samplers and training loops treat them alike:

  * ``cond_emb = model.encode(...)`` runs the condition stack once -> ``dict(xf_proj, xf_out)``;
  * ``model(x, t, cond_emb=cond_emb, low_res=...)`` or ``model.decode(x, t, **cond_emb, low_res=...)``
    reuse it at every step (identical to passing the raw condition every time).

State-dict keys equal the official checkpoints: a GLIDE model has GLIDE's flat keys (UNet and
text stack at the top level); a PITI model has ``encoder.*`` (condition encoder) and
``decoder.*`` (GLIDE's UNet without the text stack, keeping ``transformer_proj`` and every
``encoder_kv``).
"""

import torch
import torch.nn as nn

from piti.errors import ConditionError
from piti.nn.encoder import ConditionEncoder
from piti.nn.layers import LayerNorm32
from piti.nn.text import Transformer
from piti.nn.unet import UNet


def _unet_kwargs(config) -> dict:
    """UNet arguments from a ModelConfig (official option names -> constructor arguments)."""
    return dict(
        image_size=config.image_size,
        model_channels=config.num_channels,
        num_res_blocks=config.num_res_blocks,
        channel_mult=config.resolved_channel_mult(),
        attention_ds=config.attention_ds(),
        num_heads=config.num_heads,
        num_head_channels=config.num_head_channels,
        dropout=config.dropout,
        use_scale_shift_norm=config.use_scale_shift_norm,
        resblock_updown=config.resblock_updown,
        xf_width=config.xf_width,
        super_res=config.super_res,
        use_checkpoint=config.use_checkpoint,
        cond_locality=config.cond_locality,
        cond_hint_channels=config.cond_channels if config.cond_hint else 0,
    )


def _unpack(cond_emb) -> dict:
    """The dict returned by ``encode`` (``xf_proj``, ``xf_out``, and ``hint`` where the model takes it), checked."""
    if not isinstance(cond_emb, dict) or not {"xf_proj", "xf_out"} <= set(cond_emb) <= {"xf_proj", "xf_out", "hint"}:
        got = sorted(cond_emb) if isinstance(cond_emb, dict) else type(cond_emb).__name__
        raise ConditionError(
            f"`cond_emb` must be the dict returned by model.encode(...) with 'xf_proj' and 'xf_out', got {got}"
        )
    return cond_emb


class GLIDEModel(UNet):
    """GLIDE text-to-image (or text-conditioned super-resolution) model with the official flat keys.

    ``model(x, t, tokens=(B, text_ctx) int, mask=(B, text_ctx) bool, low_res=None)``; ``mask`` is True
    for real tokens and False for padding (padding slots get ``padding_embedding``).
    """

    def __init__(self, config):
        super().__init__(**_unet_kwargs(config))
        self.config = config
        w, n = config.xf_width, config.text_ctx
        self.token_embedding = nn.Embedding(config.n_vocab, w)
        self.positional_embedding = nn.Parameter(torch.empty(n, w))
        self.padding_embedding = nn.Parameter(torch.empty(n, w)) if config.xf_padding else None
        self.transformer = Transformer(w, config.xf_layers, config.xf_heads, use_checkpoint=config.use_checkpoint)
        self.final_ln = LayerNorm32(w) if config.xf_final_ln else None
        # Small normal init, as CLIP; the official code leaves the two position tables as torch.empty.
        for p in (self.token_embedding.weight, self.positional_embedding, self.padding_embedding):
            if p is not None:
                nn.init.normal_(p, std=0.02)

    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor = None) -> dict:
        """Run the text stack once: ``dict(xf_proj=(B, W) last token, xf_out=(B, W, text_ctx))``."""
        cfg = self.config
        if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.shape[1] != cfg.text_ctx:
            got = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
            raise ConditionError(f"expected `tokens` of shape (B, {cfg.text_ctx}) (padded token ids), got {got}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= cfg.n_vocab):
            raise ConditionError(f"token ids must lie in [0, {cfg.n_vocab}), got [{tokens.min()}, {tokens.max()}]")
        x = self.token_embedding(tokens.long()) + self.positional_embedding[None]
        if self.padding_embedding is not None:
            if mask is None or tuple(mask.shape) != tuple(tokens.shape):
                got = None if mask is None else tuple(mask.shape)
                raise ConditionError(
                    f"expected a bool `mask` of shape {tuple(tokens.shape)} (True = real token), got {got}"
                )
            x = torch.where(mask.bool()[..., None], x, self.padding_embedding[None].to(x.dtype))
        x = self.transformer(x)
        if self.final_ln is not None:
            x = self.final_ln(x)
        return dict(xf_proj=x[:, -1], xf_out=x.transpose(1, 2))

    encode = encode_text

    def decode(self, x, t, xf_proj, xf_out, low_res=None, hint=None, cache=None):
        """The UNet alone, given an encoded condition (see ``UNet.forward``)."""
        return super().forward(x, t, xf_proj, xf_out, low_res, hint, cache)

    def forward(self, x, t, tokens=None, mask=None, low_res=None, cond_emb=None, cache=None):
        """Predict [epsilon, v] (B, 6, H, W) from ``x_t``, ``t`` and either ``tokens``/``mask`` or ``cond_emb``;
        ``cache``: a :class:`~piti.nn.unet.FeatureCache` of the sampling run."""
        if cond_emb is None:
            if tokens is None:
                raise ConditionError("give either `tokens` (with `mask`) or `cond_emb` from model.encode_text()")
            cond_emb = self.encode_text(tokens, mask)
        return self.decode(x, t, **_unpack(cond_emb), low_res=low_res, cache=cache)


class PITIModel(nn.Module):
    """PITI: a condition encoder (``encoder``) feeding GLIDE's UNet (``decoder``).

    ``model(x, t, ref=(B, cond_channels, cond_size, cond_size), low_res=None)``; the upsampler also
    takes ``ref``, as in the official code.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = ConditionEncoder(
            config.cond_channels,
            cond_size=config.cond_size,
            width=config.xf_width,
            layers=config.encoder_layers,
            heads=config.encoder_heads,
            cnn_channels=config.encoder_cnn_channels,
            task=config.task,
            use_checkpoint=config.use_checkpoint,
        )
        self.decoder = UNet(**_unet_kwargs(config))

    def encode(self, ref: torch.Tensor) -> dict:
        """Run the condition encoder once: ``dict(xf_proj=(B, W), xf_out=(B, W, N))``, with ``hint=ref`` for a
        model with ``cond_hint``."""
        out = self.encoder(ref)
        return dict(out, hint=ref) if self.config.cond_hint else out

    def decode(self, x, t, xf_proj, xf_out, low_res=None, hint=None, cache=None):
        """The decoder alone, given an encoded condition (see ``UNet.forward``)."""
        return self.decoder(x, t, xf_proj, xf_out, low_res, hint, cache)

    def forward(self, x, t, ref=None, low_res=None, cond_emb=None, cache=None):
        """Predict [epsilon, v] (B, 6, H, W) from ``x_t``, ``t`` and either ``ref`` or ``cond_emb``; ``cache``: a
        :class:`~piti.nn.unet.FeatureCache` of the sampling run."""
        if cond_emb is None:
            if ref is None:
                raise ConditionError("give either the condition image `ref` or `cond_emb` from model.encode()")
            cond_emb = self.encode(ref)
        return self.decode(x, t, **_unpack(cond_emb), low_res=low_res, cache=cache)
