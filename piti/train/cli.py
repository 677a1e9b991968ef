"""``piti train``: run one training stage from a YAML recipe, with ``key=value`` overrides.

Examples::

    piti train --config configs/toy.yaml --stage pretrain
    piti train --config configs/toy.yaml --stage encoder task=sketch batch_size=8
    piti train --config configs/official.yaml --stage encoder --init ckpt/base.pt
    piti train --resume runs/toy/encoder-mask            # continue exactly where it stopped
    torchrun --nproc_per_node 8 -m piti.cli train --config configs/official.yaml --stage joint --init ...
"""

from __future__ import annotations

import logging
import os

from piti.errors import ConfigError
from piti.train.config import (
    PRECISIONS,
    STAGES,
    TrainConfig,
    apply_overrides,
    list_sections,
    load_recipe,
    parse_overrides,
)


def configure_parser(parser) -> None:
    parser.add_argument("--config", help="recipe YAML file (e.g. configs/toy.yaml, configs/official.yaml)")
    parser.add_argument("--stage", help=f"section of the recipe to run; its stage is one of {', '.join(STAGES)}")
    parser.add_argument(
        "--init",
        help="checkpoint to start from: official GLIDE (base.pt, upsample.pt), "
        "official PITI, a stage-1 encoder file, or one of this project's model files",
    )
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="train the same architecture without pretrained weights (joint and upsampler stages)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="RUN_OR_CHECKPOINT",
        help="continue a run from its newest checkpoint (a run folder or a checkpoint file; "
        "alone: the run folder of --config/--stage)",
    )
    parser.add_argument("--out", help="run folder (overrides out_dir)")
    parser.add_argument("--device", help="auto, cpu, cuda (overrides device)")
    parser.add_argument("--precision", choices=PRECISIONS, help="(overrides precision)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, YAML values: lr=2e-5 data.length=512 model_overrides.num_channels=32",
    )


def resolve_config(args) -> tuple[TrainConfig, str | None]:
    """The run's config and what to resume from, from the parsed arguments."""
    overrides = parse_overrides(args.overrides)
    for key, value in (
        ("init", args.init),
        ("out_dir", args.out),
        ("device", args.device),
        ("precision", args.precision),
    ):
        if value is not None:
            overrides[key] = value
    if args.from_scratch:
        overrides["from_scratch"] = True
        overrides.setdefault("init", None)  # the recipe's pretrained init no longer applies

    resume = args.resume
    if args.config:
        if not args.stage:
            raise ConfigError(
                f"--stage is required with --config; sections of {args.config}: {', '.join(list_sections(args.config))}"
            )
        config = load_recipe(args.config, args.stage, overrides)
        if resume == "":
            resume = config.out_dir
    elif resume:
        from piti.train.loop import find_state, run_dir_of_state

        run_dir = run_dir_of_state(find_state(resume))
        saved = TrainConfig.load(run_dir / "config.yaml")
        overrides.setdefault("out_dir", str(run_dir))
        config = TrainConfig.from_dict(apply_overrides(saved.to_dict(), overrides))
    else:
        raise ConfigError("give --config RECIPE --stage SECTION, or --resume RUN_FOLDER")
    return config, resume


def run(args) -> int:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config, resume = resolve_config(args)
    from piti.train.loop import train

    path = train(config, resume=resume or None)
    if rank == 0:
        print(f"model written to {path}")
    return 0
