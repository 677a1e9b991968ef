"""The ``piti`` command.

Each subcommand lives next to the code it drives and exposes two functions:
``configure_parser(parser)`` adds its arguments and ``run(args) -> int`` does
the work. This file only maps names to modules, so adding a command never
means editing another command's code.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from piti.errors import PitiError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("piti.info", "show presets, parameter counts and where weights are looked for"),
    "synth": ("piti.data.synth", "generate synthetic-world scenes (image, labels, sketch, depth, caption)"),
    "prepare": (
        "piti.data.prepare",
        "convert a raw dataset (ADE20K, COCO-Stuff, DIODE, folder) to the training layout",
    ),
    "train": ("piti.train.cli", "train a stage: pretrain, encoder, encoder-dropout, joint, upsampler"),
    "sample": ("piti.sample_cli", "translate a condition image into photos"),
    "eval": ("piti.eval_cli", "evaluate generated images (FID, alignment)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="piti", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):
                # the command is not implemented yet in this checkout
                p.set_defaults(_missing=module_name)
                continue
            raise
        module.configure_parser(p)
        p.set_defaults(_run=module.run)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse ``argv``; ``key=value`` overrides may also come after options (``piti train ... a=1 --flag b=2``):
    argparse stops collecting positionals at the first option and returns the rest as extras."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that record how they were run
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", None):
        print(f"piti {args.command}: not available in this version ({args._missing} is missing)", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except PitiError as e:
        print(f"piti {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"piti {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
