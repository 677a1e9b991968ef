"""The numbers of the embedded toy models' card (checkpoints/toy/README.md), from files, not by hand.

    python eval/toy_model_card.py                 # after scripts/toy_models.sh (make toy-models)
    python eval/toy_model_card.py --no-copy       # only from the logs already kept in checkpoints/toy/logs

1. copies each stage run's ``log.csv`` (``runs/toy/<run>/log.csv``; runs/ is not in git) to
   ``checkpoints/toy/logs/<run>.csv``, so the card can be rebuilt from the repository alone;
2. from those logs: steps and training seconds per stage (the sum of the logged seconds per step over
   the logged steps: compute time, without start-up and sample grids), and ``loss_curves.png``;
3. from the shipped files: parameters and megabytes of each model, and their total (budget 60 MB);
4. from ``alignment.json`` (``eval/toy_alignment.py``): mIoU of generated vs real images, FID-T, and the
   sampling time per image;
5. writes all of it to ``card.json`` and rewrites the block between ``<!-- numbers:begin -->`` and
   ``<!-- numbers:end -->`` of the card. The work is :func:`piti.evaluation.card.build_card`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from piti.errors import PitiError
from piti.evaluation.card import BEGIN, build_card
from piti.pipeline import TOY_CHECKPOINT_DIR


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--runs", type=Path, default=Path("runs/toy"), help="the toy recipe's run folders (default runs/toy)"
    )
    p.add_argument(
        "--models-dir", type=Path, default=TOY_CHECKPOINT_DIR, help="shipped folder (default checkpoints/toy)"
    )
    p.add_argument("--no-copy", action="store_true", help="use only the logs already in MODELS_DIR/logs")
    args = p.parse_args(argv)
    try:
        out = build_card(
            args.runs,
            args.models_dir,
            copy=not args.no_copy,
            command="python eval/toy_model_card.py" + (" --no-copy" if args.no_copy else ""),
        )
    except PitiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    readme = args.models_dir / "README.md"
    if out["readme_updated"]:
        print(f"updated the numbers of {readme}")
    else:
        print(out["block"])
        print(f"({readme} has no {BEGIN} block: the numbers above were not written into it)")
    print(f"wrote {args.models_dir / 'card.json'} and {args.models_dir / 'loss_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
