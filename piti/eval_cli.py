"""``piti eval``: generate images for evaluation, and score them (FID-I / FID-C / FID-T, controllability,
diversity), then lay the scores out as the paper's tables.

    piti eval generate --task mask --synth 16 --out out/eval/mask            # held-out toy scenes
    piti eval generate --task mask --data data/coco-val --base B --upsampler U --out out/eval/coco-mask
    piti eval fid --real out/eval/mask/real --fake out/eval/mask/fake --features toy
    piti eval fid --real ref.npz --fake DIR --features clip --tag table5/coco-mask --out fidc.json
    piti eval align --task mask --dir out/eval/mask
    piti eval diversity --dir out/eval/mask
    piti eval table fid-*.json --out out/tables

Every subcommand checks its inputs (folders, pairing, weights files) before any work and writes its result
files only at the end, atomically: a failed run leaves no partial result. See docs/evaluation.md.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from piti.errors import ConfigError, DatasetError


def _command(args) -> str:
    """The command line that ran, as ``piti.cli.main`` received it."""
    argv = getattr(args, "argv", None) or sys.argv[1:]
    return "piti " + " ".join(shlex.quote(str(a)) for a in argv)


def _write_json(path, record: dict) -> None:
    from piti.data.imageio import save_text

    save_text(path, json.dumps(record, indent=2, default=str) + "\n")


def _check_out(path, suffix: str = ".json"):
    """A result file's path, checked before any work (its folder is made at the end)."""
    if path is None:
        return None
    path = Path(path)
    if path.suffix != suffix:
        raise ConfigError(f"{path}: result files end in {suffix}")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder")
    return path


# ------------------------------------------------------------------------------------------ generate


def _configure_generate(p) -> None:
    from piti.settings import add_settings_arguments
    from piti.tasks import TASKS

    p.add_argument("--task", required=True, choices=TASKS)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synth", type=int, metavar="N", help="N held-out synthetic scenes (toy models)")
    src.add_argument("--data", metavar="ROOT", help="a prepared dataset (`piti prepare`'s layout), e.g. a val split")
    src.add_argument("--conds", metavar="DIR", help="a folder of condition pictures (no ground truth)")
    p.add_argument("--start", type=int, default=0, help="(--synth) first held-out scene (default 0)")
    p.add_argument("--limit", type=int, default=None, help="(--data, --conds) translate only the first N")
    p.add_argument(
        "--resize",
        choices=("squash", "center"),
        default="squash",
        help="(--data) squash the whole picture to a square as the official evaluation (default), "
        "or take the centre square",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the evaluation folder (fake/, real/, ...)")
    p.add_argument("--samples", type=int, default=1, help="samples per condition (>= 2 for diversity; default 1)")
    p.add_argument("--seed", type=int, default=0, help="condition i uses seed + i (default 0)")
    p.add_argument("--base", default=None, metavar="CKPT", help="base checkpoint (default: the embedded toy model)")
    p.add_argument("--upsampler", default=None, metavar="CKPT", help="upsampler checkpoint")
    p.add_argument("--no-upsample", action="store_true", help="stop at the base samples")
    p.add_argument("--profile", choices=("fast", "official"), default=None, help="default settings profile")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--precision", default=None, help="auto, fp32, bf16 or fp16 (default: the profile's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_settings_arguments(p)


def _run_generate(args) -> int:
    from piti.evaluation import generate as gen
    from piti.pipeline import PITIPipeline
    from piti.settings import settings_from_args

    if args.upsampler and not args.base:
        raise ConfigError("--upsampler needs --base as well")
    if args.synth is not None and args.synth < 1:
        raise ConfigError(f"--synth must be >= 1, got {args.synth}")
    if args.conds is not None:
        from piti.evaluation.images import check_readable, list_images

        check_readable(list_images(args.conds, "conditions")[: args.limit], "conditions")
    kwargs = dict(task=args.task, device=args.device, profile=args.profile)
    if args.precision is not None:
        kwargs["precision"] = args.precision
    pipe = PITIPipeline.from_checkpoints(args.base, args.upsampler, **kwargs)
    upsample = not args.no_upsample and pipe.upsampler_model is not None
    size = pipe.upsampler_model.config.image_size if upsample else pipe.base_model.config.image_size
    cond_size = pipe.base_model.config.cond_size
    if args.synth is not None:
        examples = gen.synth_examples(args.task, args.synth, args.start, size, cond_size)
        source = f"synth: held-out scenes {args.start}..{args.start + args.synth - 1}"
    elif args.data is not None:
        examples = gen.dataset_examples(args.task, args.data, size, cond_size, args.resize, args.limit)
        source = f"prepared dataset {args.data} ({args.resize})"
    else:
        examples = gen.folder_examples(args.conds, args.limit)
        source = f"condition folder {args.conds}"
    record = {
        "command": _command(args),
        "source": source,
        "base": pipe.sources["base"],
        "upsampler": pipe.sources["upsampler"] if upsample else None,
        "size": size,
    }
    info = gen.generate(
        pipe,
        args.task,
        examples,
        args.out,
        samples=args.samples,
        seed=args.seed,
        upsample=upsample,
        settings=settings_from_args(args),
        progress=not args.no_progress,
        record=record,
    )
    print(
        f"piti eval generate: {info['generated']} generated, {info['skipped']} already there, in {args.out} ({size} px)"
    )
    return 0


# ------------------------------------------------------------------------------------------ fid


def _configure_fid(p) -> None:
    from piti.evaluation.fid import FEATURES, MODES

    p.add_argument("--real", required=True, metavar="DIR|STATS.npz", help="real images, or their saved statistics")
    p.add_argument("--fake", required=True, metavar="DIR", help="generated images")
    p.add_argument(
        "--features",
        required=True,
        choices=FEATURES,
        help="inception (FID-I), clip (FID-C) or toy (FID-T, the toy segmenter)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="clean",
        help="clean-fid's resize mode for Inception: clean (default), legacy_tensorflow, legacy_pytorch "
        "(pytorch-fid's network and resize)",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="the extractor's weights file or folder (default: its standard cache, see `piti info`)",
    )
    p.add_argument(
        "--kid",
        action="store_true",
        help="also KID (needs the real features: a folder, or statistics saved with --kid)",
    )
    p.add_argument(
        "--save-real-stats",
        default=None,
        metavar="FILE.npz",
        help="save the real set's statistics (computed once, reused with --real FILE.npz)",
    )
    p.add_argument(
        "--toy-size",
        type=int,
        default=None,
        help="(toy) resize every image to this size first (default: they must share one size)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tag", default=None, help="the table cell of this result: table5/TASK or table3/ROW")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the result as JSON")
    p.add_argument("--progress", action="store_true", help="progress bars")


def _run_fid(args) -> int:
    from piti.evaluation import fid

    out = _check_out(args.out)
    stats_out = _check_out(args.save_real_stats, ".npz")
    weights = fid.check_extractor(args.features, args.mode, args.weights)  # 1. weights, before any work
    real_is_stats = str(args.real).endswith(".npz")
    if real_is_stats and not Path(args.real).is_file():
        raise DatasetError(f"statistics file not found: {args.real}")
    if real_is_stats and stats_out is not None:
        raise ConfigError("--save-real-stats needs --real to be a folder of images")
    fake_files, fake_sizes = fid.check_folder(args.fake, "fake")  # 2. every image readable
    real_files, real_sizes = ([], []) if real_is_stats else fid.check_folder(args.real, "real")
    if len(fake_files) < 2 or (not real_is_stats and len(real_files) < 2):
        raise DatasetError("FID needs at least 2 images in each set")
    sizes = set(fake_sizes) | set(real_sizes)
    if args.features == "toy" and len(sizes) > 1 and args.toy_size is None:
        raise DatasetError(
            f"toy features compare images of one size; these folders hold {sorted(sizes)}: "
            "give --toy-size N to resize them all (PIL bicubic)"
        )
    extractor = fid.build_extractor(args.features, args.mode, weights, args.device)  # 3. the network
    kw = dict(batch_size=args.batch_size, size=args.toy_size, device=args.device, progress=args.progress)
    if real_is_stats:
        stats = fid.load_stats(args.real, extractor)
        real_feats = stats.get("feats")
        if args.kid and real_feats is None:
            raise ConfigError(
                f"--kid needs the real features; {args.real} holds statistics only "
                "(save them with --kid --save-real-stats)"
            )
        mu_r, sigma_r, num_real = stats["mu"], stats["sigma"], stats["num"]
    else:
        real_feats = fid.folder_features(real_files, extractor, description="real", **kw)
        mu_r, sigma_r = fid.feature_statistics(real_feats)
        num_real = len(real_files)
    fake_feats = fid.folder_features(fake_files, extractor, description="fake", **kw)
    value = fid.frechet_distance(mu_r, sigma_r, *fid.feature_statistics(fake_feats))
    name = {"inception": "FID-I", "clip": "FID-C", "toy": "FID-T"}[args.features]
    record = {
        "metric": name,
        "fid": value,
        "features": args.features,
        "mode": extractor.mode,
        "weights": extractor.weights,
        "num_real": num_real,
        "num_fake": len(fake_files),
        "real": str(args.real),
        "fake": str(args.fake),
        "sizes": sorted(map(list, sizes)),
        "tag": args.tag,
        "command": _command(args),
    }
    if args.features == "toy":
        record["note"] = fid.FID_T_NOTE
    if args.kid:
        record["kid"] = fid.kid_from_features(real_feats, fake_feats)
    if stats_out is not None:
        fid.save_stats(stats_out, real_feats, extractor, str(args.real), keep_features=args.kid)
    if out is not None:
        _write_json(out, record)
    kid = f", KID {record['kid']:.5f}" if args.kid else ""
    print(
        f"{name} {value:.4f}{kid} ({num_real} real, {len(fake_files)} generated; {args.features}, "
        f"{extractor.mode}, {Path(extractor.weights).name})"
    )
    return 0


# ------------------------------------------------------------------------------------------ align


def _configure_align(p) -> None:
    from piti.evaluation.alignment import EDGE_TOLERANCE
    from piti.tasks import TASKS

    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--dir", required=True, help="the evaluation folder of `piti eval generate`")
    p.add_argument(
        "--judge",
        default=None,
        metavar="PATH",
        help="mask: a segmenter, depth: a depth estimator (default: the toy judges in checkpoints/toy; "
        "a TorchScript file for real data, see docs/evaluation.md)",
    )
    p.add_argument(
        "--edges",
        choices=("canny", "hed", "precomputed"),
        default="canny",
        help="(sketch) edges of the images: canny (default, weights-free), hed (--hed-model), or "
        "precomputed (--fake-edges, --real-edges)",
    )
    p.add_argument("--hed-model", default=None, metavar="PATH", help="(sketch) a TorchScript HED network")
    p.add_argument("--fake-edges", default=None, metavar="DIR", help="(sketch) edge maps of the generated images")
    p.add_argument("--real-edges", default=None, metavar="DIR", help="(sketch) edge maps of the real images")
    p.add_argument(
        "--tolerance",
        type=int,
        default=EDGE_TOLERANCE,
        help=f"(sketch) edge matching distance in pixels (default {EDGE_TOLERANCE})",
    )
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the result as JSON")


def _run_align(args) -> int:
    from piti.evaluation.alignment import align_folder, interval_text

    out = _check_out(args.out)
    r = align_folder(
        args.dir, args.task, args.judge, args.edges, args.hed_model, args.fake_edges, args.real_edges, args.tolerance
    )
    r["command"] = _command(args)
    if out is not None:
        _write_json(out, r)
    if args.task == "mask":
        line = f"mIoU generated {r['miou_generated']:.3f}, real {r['miou_real']:.3f}, ratio {r['miou_ratio']:.2f}"
    elif args.task == "sketch":
        line = (
            f"edge F1 ({r['edges']}, {r['tolerance_px']} px) generated {r['edge_f1_generated']:.3f}, "
            f"real {r['edge_f1_real']:.3f}, ratio {r['edge_f1_ratio']:.2f}"
        )
    else:
        line = (
            f"RMSE generated {r['rmse_generated']:.2f} m, real {r['rmse_real']:.2f} m, ratio (real/generated) "
            f"{r['rmse_ratio']:.2f}; AbsRel {r['absrel_generated']:.3f} / {r['absrel_real']:.3f}"
        )
    if r.get("ratio_interval"):
        line += f" (90% interval of the ratio over the images {interval_text(r['ratio_interval'])})"
    print(f"{args.task} ({r['num']} images, {r['size']} px): {line}")
    return 0


# ------------------------------------------------------------------------------------------ diversity


def _configure_diversity(p) -> None:
    p.add_argument("--dir", required=True, help="an evaluation folder with samples/NAME/*.png (generate --samples K)")
    p.add_argument(
        "--lpips",
        choices=("auto", "yes", "no"),
        default="auto",
        help="LPIPS: auto (when its backbone weights are present; default), yes (required), no",
    )
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS backbone (default alex)")
    p.add_argument("--lpips-weights", default=None, metavar="PATH", help="the backbone's weights file or folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the result as JSON")


def _run_diversity(args) -> int:
    from piti.errors import MissingWeightsError
    from piti.evaluation import diversity
    from piti.weights import find_weights

    out = _check_out(args.out)
    groups = diversity.sample_groups(args.dir)
    lpips_note = None
    use_lpips = args.lpips != "no"
    if use_lpips:
        try:
            find_weights({"alex": "alexnet", "vgg": "vgg16"}[args.lpips_net], args.lpips_weights)
        except MissingWeightsError as e:
            if args.lpips == "yes":
                raise
            use_lpips, lpips_note = False, f"LPIPS not computed: {e}"
    r = {
        "conditions": len(groups),
        "samples": sum(len(v) for v in groups.values()),
        "pixel_l1": diversity.pixel_diversity(groups),
        "pixel_l1_note": diversity.PIXEL_NOTE,
        "lpips": diversity.lpips_diversity(groups, args.lpips_net, args.lpips_weights, args.device)
        if use_lpips
        else None,
        "lpips_net": args.lpips_net if use_lpips else None,
        "lpips_note": lpips_note,
        "command": _command(args),
    }
    if out is not None:
        _write_json(out, r)
    if lpips_note:
        print(f"piti eval diversity: {lpips_note}", file=sys.stderr)
    lp = f"LPIPS ({args.lpips_net}) {r['lpips']:.4f}; " if use_lpips else ""
    print(
        f"{r['conditions']} conditions, {r['samples']} samples: {lp}pixel L1 {r['pixel_l1']:.4f} "
        f"(weights-free, not LPIPS)"
    )
    return 0


# ------------------------------------------------------------------------------------------ table


def _configure_table(p) -> None:
    p.add_argument("results", nargs="*", help="result JSONs of `piti eval fid` with --tag")
    p.add_argument("--out", default=None, metavar="DIR", help="write table5.md/.csv and table3.md/.csv here")


def _run_table(args) -> int:
    from piti.data.imageio import save_text
    from piti.evaluation.tables import build_tables

    files = build_tables(args.results)
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a folder")
        for name, text in files.items():
            save_text(out / name, text)
    print(files["table5.md"])
    print(files["table3.md"])
    return 0


# ------------------------------------------------------------------------------------------ the command


SUBCOMMANDS = {
    "generate": (_configure_generate, _run_generate, "one sample per condition, ground truth beside it"),
    "fid": (_configure_fid, _run_fid, "FID-I / FID-C / FID-T between two folders (clean-fid)"),
    "align": (_configure_align, _run_align, "controllability: mIoU (mask), edge F1 (sketch), depth error (depth)"),
    "diversity": (_configure_diversity, _run_diversity, "LPIPS and pixel diversity between samples of a condition"),
    "table": (_configure_table, _run_table, "the paper's Table 5 and Table 3 from result JSONs"),
}


def configure_parser(parser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    for name, (configure, run_fn, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(_eval_run=run_fn)


def run(args) -> int:
    if getattr(args, "_eval_run", None) is None:
        raise ConfigError("piti eval needs a subcommand: " + ", ".join(SUBCOMMANDS))
    return args._eval_run(args)
