# ruff: noqa: E402, E703  (notebook source: imports where they are used, ";" hides a figure's repr)
# %% [markdown]
# # 00 · Quickstart: the PITI pipeline in five cells
#
# PITI ("Pretraining is All You Need for Image-to-Image Translation", Wang et al. 2022) turns a
# condition image (a semantic label map, a sketch, a depth map) into a photo with a finetuned GLIDE:
# a 64-px base model guided by the condition, then an upsampler. This notebook runs the embedded toy
# models (`checkpoints/toy/`, trained on the project's synthetic world) on a scene none of them saw.
# Everything runs on a CPU; `PITI_FAST=1` shrinks the step counts.

# %%
from IPython.display import Markdown, display

from piti import PITIPipeline, plotting
from piti.data.conditions import depth_visualization
from piti.data.palettes import SYNTH_CLASSES, SYNTH_PALETTE
from piti.data.synth import generate_scene

plotting.setup()
FAST = plotting.fast_mode()
print("fast mode" if FAST else "full mode")

# %% [markdown]
# **1. A synthetic scene.** The synthetic world stands in for the paper's datasets (COCO-Stuff, ADE20K,
# DIODE): each scene comes with its photo, label map, sketch, depth and a caption. Scene `(7, 0)` is
# held out (the toy models train on world seed 0).

# %%
scene = generate_scene((7, 0), 128)
print(scene.caption)
plotting.image_grid([scene.image], ["the real photo (128 px)"], size=2.5);

# %% [markdown]
# **2. Its three conditions**, one per PITI task (the paper's mask-to-image, sketch-to-image and
# geometry-to-image): the label map as colours, the Canny sketch (white edges on black), and the depth
# map (shown with DIODE's visualisation; the model takes metres and derives normals itself).

# %%
conditions = {"mask": scene.colors, "sketch": scene.sketch, "depth": scene.depth}
plotting.image_grid([scene.colors, scene.sketch, depth_visualization(scene.depth)],
                    ["label map (mask)", "sketch", "depth"], size=2.2)
plotting.palette_legend(SYNTH_CLASSES, SYNTH_PALETTE);

# %% [markdown]
# **3. The translations.** One pipeline per task: the base model samples 64-px images with normalized
# classifier-free guidance (the paper's guidance rule; notebook 04) and the upsampler takes them to
# 128 px. Each checkpoint carries its recommended sampling settings; the call overrides only the step
# counts in fast mode.

# %%
steps = plotting.pick({}, dict(steps="4", upsample_steps="2"))
n = plotting.pick(2, 1)  # samples per condition
outputs = {}
for task, condition in conditions.items():
    pipe = PITIPipeline.from_checkpoints(task=task, precision="fp32")
    outputs[task] = pipe(condition, num_samples=n, seed=0, progress=False, **steps)
rows = [[scene.image] + out.base_images + out.images for out in outputs.values()]
plotting.image_grid(rows, ["real"] + ["base 64 px"] * n + ["upsampled 128 px"] * n, row_labels=list(outputs),
                    size=1.8);

# %% [markdown]
# **4. The settings** each translation used, as recorded in `out.settings` (a JSON-ready dict, the same
# as `piti sample` writes beside its images). `guidance` is the paper's w; same seed, same pixels.

# %%
keys = ["guidance", "guidance_mode", "sampler", "steps", "noise_scale", "reward_guidance", "cache_interval",
        "upsample_sampler", "upsample_steps", "upsample_start", "upsample_reward_guidance", "precision", "seed"]
rows = [[task] + [out.settings.get(k, "") for k in keys] for task, out in outputs.items()]
display(Markdown(plotting.markdown_table(rows, ["task"] + keys)))
print({task: {k: round(v, 1) for k, v in out.settings["timings"].items()} for task, out in outputs.items()})

# %% [markdown]
# **5. One setting changed.** Any setting is a keyword of the call: here the guidance strength, w = 0
# (the conditional model alone) against the checkpoint's recommended w, same seeds (64-px base samples).
# Notebook 04 measures what guidance does to alignment and quality.

# %%
pipe = PITIPipeline.from_checkpoints(task="mask", precision="fp32")
no_guidance = pipe(scene.colors, num_samples=n, seed=0, progress=False, upsample=False, guidance=0.0, **steps)
guided = pipe(scene.colors, num_samples=n, seed=0, progress=False, upsample=False, **steps)
w = guided.settings["guidance"]
plotting.image_grid([scene.colors] + no_guidance.images + guided.images,
                    ["label map"] + ["w = 0"] * n + [f"w = {w:g}"] * n, size=1.8);
