"""``piti info``: presets, their sizes, and where external weights are looked for."""

from __future__ import annotations


def configure_parser(parser) -> None:
    parser.add_argument("--presets", action="store_true", help="only list the model presets")


def _count_params(name: str) -> int:
    from piti.presets import create_model

    model = create_model(name, device="meta")  # shapes only: no memory, no time
    return sum(p.numel() for p in model.parameters())


def run(args) -> int:
    import piti
    from piti.presets import list_presets

    print(f"piti {piti.__version__}\n\nmodel presets (parameters):")
    for name in list_presets():
        print(f"  {name:28s} {_count_params(name):>13,d}")
    if args.presets:
        return 0
    from piti.weights import describe_weights

    print("\nexternal weights (looked for, never downloaded):")
    for name, path, present in describe_weights():
        print(f"  [{'x' if present else ' '}] {name:24s} {path}")
    return 0
