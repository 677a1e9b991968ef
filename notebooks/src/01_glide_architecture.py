# ruff: noqa: E402, E703  (notebook source: imports where they are used, ";" hides a figure's repr)
# %% [markdown]
# # 01 · GLIDE, the pretrained prior
#
# PITI starts from GLIDE (Nichol et al. 2022), a text-to-image diffusion model trained on a web-scale
# corpus: a 64-px text-conditional UNet and a 64-to-256 upsampler, each with its own text transformer.
# The paper's premise is that this pretraining gives a semantic latent space that image-to-image
# tasks can reuse. This notebook looks at the networks (`piti.nn`), the diffusion schedules
# (`piti.diffusion`), and the toy GLIDE that the embedded models were finetuned from.

# %%
import os
from pathlib import Path

import torch
from IPython.display import Markdown, display

from piti import create_model, plotting
from piti.checkpoints import load_model
from piti.data.synth import generate_scene
from piti.data.tokenizer import tokenizer_from_dict
from piti.diffusion import create_diffusion
from piti.errors import PitiError

plotting.setup()
FAST = plotting.fast_mode()
torch.manual_seed(0);

# %% [markdown]
# **Parameter counts by part, at full size.** The official networks are built on PyTorch's `meta` device:
# shapes only, no memory and no weights. GLIDE's base model here is the released "filtered" 385M-parameter
# network that PITI starts from (the GLIDE paper's 3.5B-parameter model was not released); PITI keeps the
# UNet, drops the text transformer and puts its task encoder in its place.

# %%
full = {name: plotting.parameter_breakdown(create_model(name, device="meta"))
        for name in ("glide-base", "glide-upsample", "piti-base-mask", "piti-upsample-mask")}
plotting.plot_parameter_breakdown(full, "official sizes (meta device)")
parts = [p for p in plotting.PARTS if any(p in b for b in full.values())]
rows = [[part] + [b.get(part, 0) for b in full.values()] for part in parts]
rows.append(["**total**"] + [sum(b.values()) for b in full.values()])
display(Markdown(plotting.markdown_table(rows, ["part"] + list(full))))

# %% [markdown]
# The toy networks of this project are the same classes with fewer channels, layers and tokens
# (`piti/presets.py`): small enough to train on a CPU in hours.

# %%
toy = {name: plotting.parameter_breakdown(create_model(name, device="meta"))
       for name in ("toy-glide-base", "toy-glide-upsample", "toy-piti-base-mask", "toy-piti-upsample-mask")}
plotting.plot_parameter_breakdown(toy, "toy sizes");

# %% [markdown]
# **One forward pass, traced with tensor shapes** (toy GLIDE base, batch 1). The text transformer turns 32
# token ids into 32 vectors of width 128; its output takes two routes into the UNet:
# 1. the **pooled token** (the last one, `xf_proj`) goes through `transformer_proj` and is added to the
#    timestep embedding, which every ResBlock turns into the scale and shift of its adaptive group norm;
# 2. **all tokens** (`xf_out`) become extra keys and values (`encoder_kv`) in every attention block, so
#    each pixel attends to the words as well as to the other pixels.

# %%
glide_toy = create_model("toy-glide-base").eval()
tokens = torch.randint(0, glide_toy.config.n_vocab, (1, glide_toy.config.text_ctx))
mask = torch.ones_like(tokens, dtype=torch.bool)
trace = plotting.trace_shapes(glide_toy, torch.randn(1, 3, 64, 64), torch.tensor([500.0]), tokens=tokens,
                              mask=mask, depth=1)
display(Markdown(plotting.markdown_table([[f"`{n}`", k, s] for n, k, s in trace], ["module", "holds", "output shape"])))

# %% [markdown]
# Where the two routes enter, counted in the toy and the full-size UNet: every ResBlock reads the
# timestep-plus-pooled-text embedding, every attention block reads the tokens.

# %%
def consumers(model):
    blocks = [type(m).__name__ for m in model.modules()]
    return blocks.count("ResBlock"), blocks.count("AttentionBlock")


rows = [[name, *consumers(create_model(name, device="meta"))] for name in ("toy-glide-base", "glide-base")]
display(Markdown(plotting.markdown_table(rows, ["model", "ResBlocks (pooled token, AdaGN)",
                                               "attention blocks (all tokens, encoder_kv)"])))

# %% [markdown]
# **Noise schedules and respacing.** The base model uses the cosine schedule (Nichol & Dhariwal 2021,
# Eq. 17), the upsampler the linear one (Ho et al. 2020), both over 1,000 steps. Sampling walks a
# respaced subset of the steps (the official scripts: 250 base steps, `fast27` for the upsampler; the
# embedded toy models: 25 and 10).

# %%
plotting.plot_schedules({"base, 25 steps": ("squaredcos_cap_v2", "25"),
                         "upsampler, fast27": ("linear", "fast27"),
                         "upsampler, 10 steps": ("linear", "10")});

# %% [markdown]
# **The toy pretrained GLIDE.** The embedded PITI models started from a toy GLIDE pretrained on the
# synthetic world's captions (2,000 steps, `configs/toy.yaml`, stage `pretrain`). It is not shipped in
# `checkpoints/toy/` (size budget) but kept in git history; the helper takes it from there.

# %%
glide_path = plotting.toy_glide_checkpoint("base")
print(glide_path if glide_path else plotting.toy_glide_missing_message("base"))
if glide_path:
    glide = load_model(glide_path).eval()
    tokenizer = tokenizer_from_dict(glide.checkpoint_metadata["tokenizer"])
    print(glide.config.name, f"{sum(p.numel() for p in glide.parameters()):,} parameters,",
          f"word tokenizer of {tokenizer.vocab_size} tokens")

# %% [markdown]
# **Text-to-image samples** from held-out captions (world seed 7), plain classifier-free guidance w = 3
# (the empty caption is the null condition, as in pretraining), ancestral DDPM. The captions name the kind
# of scene and the objects in it; compare each sample with the real scene above it. As
# `checkpoints/toy/README.md` measures, this toy GLIDE follows its own captions only weakly; the real
# GLIDE's text path is what PITI's premise rests on.

# %%
n = plotting.pick(4, 2)
scenes = [generate_scene((7, i), 64) for i in range(n)]
captions = [s.caption for s in scenes]
if glide_path:
    samples = plotting.text_to_image(glide, tokenizer, captions, guidance=3.0, steps=plotting.pick("25", "8"), seed=0)
    plotting.image_grid([[s.image for s in scenes], list(samples)],
                        [[c[:28] + "…" for c in captions], [None] * n], row_labels=["real", "toy GLIDE"], size=2.0)
    for i, c in enumerate(captions):
        print(i, c)

# %% [markdown]
# **How much each route carries in the toy GLIDE.** The same noisy image at t = 600, its own caption,
# and then the other scene's caption given through one route only: the change of the predicted epsilon
# (mean absolute difference) says how much the model reads each route. In this toy model the attention
# route carries little: its attention output projections stayed near their zero initialisation
# (`checkpoints/toy/README.md`, "History"), which is why the toy PITI decoders got a locality prior.

# %%
if glide_path:
    a, b = tokenizer.batch(captions[:2], glide.config.text_ctx)
    emb = glide.encode_text(a, b)
    x0 = torch.from_numpy(scenes[0].image).permute(2, 0, 1)[None].float() / 127.5 - 1
    diffusion = create_diffusion(glide.config.noise_schedule)
    t = torch.tensor([600])
    x_t = diffusion.q_sample(x0, t, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        def eps(proj, out):
            return glide.decode(x_t, t.float(), emb["xf_proj"][proj:proj + 1], emb["xf_out"][out:out + 1])[:, :3]
        base = eps(0, 0)
        rows = [[name, float((eps(p, o) - base).abs().mean())] for name, (p, o) in
                {"pooled token only (AdaGN)": (1, 0), "tokens only (attention)": (0, 1), "both": (1, 1)}.items()]
    display(Markdown(plotting.markdown_table(rows, ["other caption through", "mean abs(Δ eps)"])))

# %% [markdown]
# **Official GLIDE weights.** Nothing is downloaded. If you have the released files (`base.pt` and
# `upsample.pt` from `openai/glide-text2im`), put them anywhere and point `PITI_GLIDE_BASE` at the base
# model (default `ckpt/base.pt` next to this repository); the loader infers the preset from the shapes,
# and `piti.checkpoints.load_weights(create_model("piti-base-mask"), path)` starts PITI's stage 1 from it
# (the text stack is dropped). Without the file, the loader says what is missing and where it goes.

# %%
official = Path(os.environ.get("PITI_GLIDE_BASE", Path(plotting.__file__).resolve().parents[1] / "ckpt" / "base.pt"))
try:
    model = load_model(official)
    print(model.config.name, f"{sum(p.numel() for p in model.parameters()):,} parameters loaded from {official}")
except PitiError as e:
    print(type(e).__name__ + ":", e)
