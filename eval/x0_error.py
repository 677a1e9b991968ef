"""How well a model predicts the clean image at each noise level: a diagnostic for young models.

    python eval/x0_error.py runs/toy/upsampler-mask/model.safetensors
    python eval/x0_error.py checkpoints/toy/piti-toy-mask-base.safetensors --steps 50 300 600 900
    python eval/x0_error.py checkpoints/toy/piti-toy-mask-base.safetensors --variance 25

Held-out synthetic scenes ``(HELDOUT_STREAM, i)`` are noised to each step t with q(x_t | x_0), the model
predicts epsilon, and the script prints, per t, the mean absolute error of the implied x0 prediction
(clamped to [-1, 1], in [-1, 1] units) next to the epsilon MSE that training minimises, and how much the x0
prediction changes when the same x_t gets the next scene's condition instead (a model that ignores its
condition scores ~0 there; one that follows it scores about the difference between two scenes, ~0.3-0.5 at
large t). For a PITI model the condition is the scene's condition image, for a toy GLIDE model (pretrain
stages) its caption. For an upsampler it also prints the error of its input alone (the bicubic
enlargement of the 64-px image).

Why it matters: with epsilon prediction, x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), so where
alpha_bar -> 0 a small epsilon error is a large x0 error, and the loss hardly teaches x0 there. A model whose
x0 error is high at large t samples badly from pure noise with the deterministic samplers (and, for an
upsampler, with any sampler): see ``upsample_start`` in docs/sampling.md.

``--variance STEPS`` reads instead the noise the ancestral sampler adds at each of STEPS respaced steps: the
learned standard deviation over the posterior's sqrt(beta~_t), next to the most it could be, sqrt(beta_t /
beta~_t). Where the two bounds meet (the early steps of a short respacing), no learned variance can make the
noise wider or narrower than the posterior's (docs/sampling.md, ``noise_scale``).
"""

from __future__ import annotations

import argparse
import sys

import torch

from piti.checkpoints import load_model
from piti.data.tokenizer import tokenizer_from_dict
from piti.errors import PitiError
from piti.evaluation.diagnostics import learned_variance, x0_errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a PITI or GLIDE model file (base or upsampler) of this project")
    p.add_argument("--steps", type=int, nargs="+", default=[50, 200, 400, 600, 800, 950], help="noise steps t")
    p.add_argument("--num", type=int, default=4, help="held-out scenes (default 4)")
    p.add_argument("--variance", metavar="STEPS", help="read the learned variance along this respacing (e.g. 25)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model).eval()
        tokenizer = None
        if model.config.kind == "glide":
            if "tokenizer" not in model.checkpoint_metadata:
                raise PitiError(f"{args.model} is a GLIDE model without its tokenizer in the file's header")
            tokenizer = tokenizer_from_dict(model.checkpoint_metadata["tokenizer"])
        if args.variance:
            rows = learned_variance(model, args.variance, args.num, tokenizer=tokenizer)
        else:
            errors = x0_errors(model, args.steps, args.num, tokenizer=tokenizer)
    except PitiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.variance:
        print(f"{args.model}: {args.num} held-out scenes, {len(rows)} respaced steps")
        print(f"{'t':>5} {'frac':>6} {'sigma / posterior':>18} {'at most':>8}")
        for r in rows:
            print(f"{r['t']:>5} {r['frac']:6.3f} {r['sigma_ratio']:18.3f} {r['upper_ratio']:8.3f}")
        return 0
    print(f"{args.model}: {args.num} held-out scenes")
    print(f"{'t':>5} {'x0 error':>9} {'eps MSE':>8} {'x0 change, other condition':>27}")
    for t in args.steps:
        print(f"{t:>5} {errors[t][0]:9.3f} {errors[t][1]:8.4f} {errors[t][2]:27.3f}")
    print(f"(the scenes themselves differ from the next one by {errors['scenes']:.3f})")
    if "bicubic" in errors:
        print(f"the upsampler's input alone (bicubic enlargement): x0 error {errors['bicubic']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
