# ruff: noqa: E402, E703  (notebook source: imports where they are used, ";" hides a figure's repr)
# %% [markdown]
# # 05 · Evaluation and the paper's tables
#
# PITI reports image quality as FID (Fréchet Inception Distance, Heusel et al. 2017): the distance between
# two Gaussians fitted to features of real and generated images,
#
# $$\mathrm{FID} = \lVert\mu_r - \mu_g\rVert^2 + \mathrm{Tr}\big(\Sigma_r + \Sigma_g - 2(\Sigma_r\Sigma_g)^{1/2}\big).$$
#
# The project computes it in three feature spaces (`piti eval fid`, through clean-fid): **FID-I** with
# Inception-v3 features (the classic FID), **FID-C** with CLIP ViT-B/32 image features (Kynkäänniemi et
# al. 2023 show CLIP features track human judgement better), and **FID-T**, the toy version, with the
# 32-D features of the synthetic world's segmenter (`checkpoints/toy/segmenter.safetensors`), the only
# feature network that needs no download. FID-T values are comparable only with each other, at the same
# number of images. This notebook runs `piti eval` on small folders, then sets the paper's Table 5 and
# Table 3 beside what this project has measured.

# %%
import json
import tempfile
from pathlib import Path

import numpy as np
from IPython.display import Image, Markdown, display
from PIL import Image as PILImage

from piti import plotting
from piti.cli import main as piti
from piti.data.synth import generate_scene
from piti.evaluation import fid_t, load_segmenter
from piti.evaluation.segmenter import HELDOUT_STREAM

plotting.setup()
FAST = plotting.fast_mode()
scratch = tempfile.TemporaryDirectory(prefix="piti-nb05-")  # evaluation folders; removed at the end
work = Path(scratch.name)

# %% [markdown]
# **The small-sample bias of FID.** Two disjoint sets of *real* held-out scenes are far apart in FID-T
# when each holds a handful of images, and much closer with tens of images: with few images the mean and
# covariance estimates are noisy, and the noise counts as distance. A measured FID is meaningful only next
# to others with the same number of images (the paper uses thousands; the toy checks here use tens).

# %%
segmenter = load_segmenter()
sizes = plotting.pick([4, 8, 16, 32, 64], [4, 8])
scenes_a = [generate_scene((HELDOUT_STREAM, 1000 + i), 128).image for i in range(max(sizes))]
scenes_b = [generate_scene((HELDOUT_STREAM, 2000 + i), 128).image for i in range(max(sizes))]
floor = [fid_t(np.stack(scenes_a[:n]), np.stack(scenes_b[:n]), segmenter) for n in sizes]
plotting.plot_curves({"real vs real (disjoint scenes)": (sizes, floor)}, xlabel="images per set",
                     ylabel="FID-T", title="FID-T between two real sets", logy=True)
display(Markdown(plotting.markdown_table([[n, f] for n, f in zip(sizes, floor)], ["images per set", "FID-T"])))

# %% [markdown]
# **`piti eval generate`** translates held-out synthetic scenes with the embedded mask model and writes
# the evaluation folder: `cond/` (the conditions), `fake/` (the translations), `real/` (the real images of
# the same scenes), `labels/` and `generate.json` (how they were made, settings included).

# %%
n = plotting.pick(16, 4)
steps = plotting.pick([], ["--steps", "6", "--upsample-steps", "2"])
piti(["eval", "generate", "--task", "mask", "--synth", str(n), "--start", "100", "--out", str(work / "mask"),
      "--no-progress", *steps])
names = sorted(p.name for p in (work / "mask" / "fake").iterdir())
rows = [[work / "mask" / folder / name for name in names[:6]] for folder in ("cond", "fake", "real")]
plotting.image_grid([[PILImage.open(p).convert("RGB") for p in r] for r in rows],
                    row_labels=["cond/", "fake/", "real/"], size=1.4);

# %% [markdown]
# **`piti eval fid`** between the `real/` and `fake/` folders. The toy features work out of the box;
# Inception and CLIP need their weights files, which nothing downloads: the command says which file is
# missing and where it goes. (With them present, the same command gives FID-I and FID-C.)

# %%
for features in ("toy", "inception", "clip"):
    rc = piti(["eval", "fid", "--real", str(work / "mask" / "real"), "--fake", str(work / "mask" / "fake"),
               "--features", features, "--out", str(work / f"fid_{features}.json")])
    print(f"--features {features}: exit code {rc}\n")

# %% [markdown]
# **`piti eval align`**: does the translation follow its condition? For masks, the segmenter's mIoU on the
# generated images against the input label maps, beside its mIoU on the real images (sketch: edge F1;
# depth: a depth estimator's error).

# %%
piti(["eval", "align", "--task", "mask", "--dir", str(work / "mask"), "--out", str(work / "align.json")])
print(json.dumps({k: v for k, v in json.loads((work / "align.json").read_text()).items()
                  if isinstance(v, (int, float)) or k == "task"}, indent=1))

# %% [markdown]
# **The paper's Table 5 and Table 3** (`piti eval table`): the published numbers in the paper's layout,
# with a column or row for ours that fills in from `piti eval fid --tag table5/TASK` or `--tag table3/ROW`
# result files. None is filled here: FID-I and FID-C of the full-size models need the official checkpoints,
# the real datasets and the Inception/CLIP weights, none of which this notebook has. A published number
# that could not be sourced is left blank (`piti/evaluation/data/published.json` says why).

# %%
piti(["eval", "table"]);

# %% [markdown]
# **The toy-scale reproduction** (`eval/reproduce_toy.py`, `piti.evaluation.reproduce`) re-runs the paper's
# claims on the synthetic world: fixed decoder / one-stage / two-stage finetuning (Table 3 (a)), the
# upsampler's degradations and losses (Table 3 (b)), pretrained against from-scratch training, plain
# against normalized guidance, and the samplers. Each arm writes a JSON result under
# `eval/results/toy/arms/`; the tables below are read from whatever results exist when this notebook
# runs, with FID-T in place of the paper's FID (compare the order of the arms, not the values).

# %%
from piti.evaluation import reproduce

results = reproduce.load_results(reproduce.RESULTS_DIR)
for experiment in reproduce.EXPERIMENTS:
    if experiment in results:
        header, rows = reproduce.table_rows(experiment, results[experiment])
        display(Markdown(f"**{experiment}**\n\n" + reproduce.markdown_table(header, rows)))
missing = [e for e in reproduce.EXPERIMENTS if e not in results]
print("experiments with results:", sorted(results) or "none")
print("experiments pending (no result file yet):", missing or "none")

# %% [markdown]
# The reproduction's plots, where they exist (`eval/results/toy/plots/*.png`):

# %%
plots = sorted(reproduce.RESULTS_DIR.glob("plots/*.png"))
for path in plots[:plotting.pick(6, 1)]:
    print(path.name)
    display(Image(filename=str(path), width=640))
if not plots:
    print("no plots yet: `python eval/reproduce_toy.py` writes them")

# %% [markdown]
# **Running the full evaluation on real data.** Nothing here downloads; with the files in place the same
# commands evaluate the official models:
#
# 1. the official checkpoints (`base_mask.pt`, `upsample_mask.pt`, ... from the PITI README; notebook 01
#    says where GLIDE's go), the datasets (`piti prepare --dataset coco-stuff --root RAW --out data/coco-mask
#    --task mask`, `docs/data.md`), and the feature weights listed below;
# 2. `piti eval generate --task mask --data data/coco-mask/val --base ckpt/base_mask.pt --upsampler
#    ckpt/upsample_mask.pt --profile official --device cuda --out eval/coco-mask`;
# 3. `piti eval fid --real eval/coco-mask/real --fake eval/coco-mask/fake --features inception --tag
#    table5/coco-mask --out results/coco-mask-fid-i.json`, the same with `--features clip` (FID-C), and
#    `piti eval align --task mask --dir eval/coco-mask --judge SEGMENTER` for controllability;
# 4. `piti eval table results/*.json --out results/` fills in the tables above.
#
# Which external weights this machine has, and where each is looked for:

# %%
from piti.weights import describe_weights

home = str(Path.home())
display(Markdown(plotting.markdown_table([[name, "present" if ok else "missing", f"`{str(path).replace(home, '~')}`"]
                                          for name, path, ok in describe_weights()],
                                         ["weights", "here", "path (found, or where it is expected)"])))

# %% [markdown]
# The evaluation folders were written to a temporary folder; it goes now.

# %%
scratch.cleanup()
