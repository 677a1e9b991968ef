"""PITI in the browser: paint a label map, draw a sketch or give a depth map, get photos.

    python demo/app.py                                   # the embedded toy models, every task
    python demo/app.py --task mask --base ckpt/base_mask.pt --upsampler ckpt/upsample_mask.pt
    python demo/app.py --hub tfwang/PITI                 # the official checkpoints through huggingface_hub

Gradio's GRADIO_SERVER_NAME and GRADIO_SERVER_PORT are honoured (--host and --port win over them), and
PITI_TASK, PITI_HUB, PITI_PALETTE, PITI_DEVICE give the defaults of --task, --hub, --palette, --device
(a Hugging Face Space runs `python app.py` without flags).
The layout and callbacks are here; what they compute lives in piti.demo_support.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

try:
    import piti  # noqa: F401
except ImportError:  # run from a checkout without installing: the package is beside this folder
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr

from piti import demo_support as ds
from piti.data.palettes import PALETTES
from piti.errors import ConditionError, PitiError
from piti.tasks import TASKS

EXAMPLES = 3


def parse_args(argv=None):
    env = os.environ.get  # a Space runs `python app.py`: its variables PITI_TASK, PITI_HUB, ... stand for flags
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--task", choices=TASKS, default=env("PITI_TASK"), help="serve this task only (required with --base)"
    )
    p.add_argument(
        "--base", default=None, metavar="CKPT", help="base checkpoint (official .pt or project .safetensors)"
    )
    p.add_argument("--upsampler", default=None, metavar="CKPT", help="upsampler checkpoint")
    p.add_argument(
        "--hub",
        default=env("PITI_HUB"),
        metavar="REPO",
        help="fetch the official checkpoints from this Hugging Face model repo (tfwang/PITI: mask, sketch)",
    )
    p.add_argument(
        "--palette",
        choices=tuple(PALETTES),
        default=env("PITI_PALETTE"),
        help="mask colours (default: synth for the embedded models, coco-stuff for official ones)",
    )
    p.add_argument("--device", default=env("PITI_DEVICE", "cpu"), help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--host", default=None, help="address to serve on (default: GRADIO_SERVER_NAME, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT, else 7860)")
    p.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    args = p.parse_args(argv)
    if (args.base or args.upsampler) and not args.task:
        p.error("--base/--upsampler need --task")
    if args.upsampler and not args.base:
        p.error("--upsampler needs --base")
    if args.hub and args.base:
        p.error("give --hub or --base, not both")
    return args


def make_store(args) -> tuple[ds.ModelStore, str, int]:
    """The lazily loaded pipelines, the mask palette and the size of the example scenes."""
    from piti.pipeline import PITIPipeline

    official = bool(args.base or args.hub)
    palette = args.palette or ("coco-stuff" if official else "synth")
    if args.hub:
        from piti.hub import HUB_FILES

        tasks = [args.task] if args.task else list(HUB_FILES)

        def loader(task):
            return PITIPipeline.from_pretrained(args.hub, task=task, device=args.device, palette=palette)
    else:
        tasks = [args.task] if args.task else list(TASKS)

        def loader(task):
            return PITIPipeline.from_checkpoints(
                args.base, args.upsampler, task=task, device=args.device, palette=palette
            )

    return ds.ModelStore(loader, tasks), palette, 256 if official else 128


# The pipeline's advice names API keywords and CLI flags; in the page, the controls that do the same.
UI_HINTS = {
    "pass snap=True (CLI: --snap)": "tick 'Snap every colour'",
    "Use sketch_from_photo=True (CLI: --sketch-from-photo)": "Choose 'photo' under 'Translate from'",
}


def user_errors(fn):
    """Show the pipeline's message for a user's mistake (PitiError) in the page, not a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PitiError as e:
            message = str(e)
            for api, ui in UI_HINTS.items():
                message = message.replace(api, ui)
            raise gr.Error(message, print_exception=False) from None

    return wrapper


def build(store: ds.ModelStore, palette: str, scene_size: int, example_dir: Path) -> gr.Blocks:
    scenes = ds.write_examples(example_dir / "examples", EXAMPLES, scene_size, palette)
    random_dir = example_dir / "random"

    specs = ds.control_specs()
    # helper events: hidden from the API, and not waiting behind a generation (only generations are serialised)
    private = dict(api_visibility="private", concurrency_limit=None)

    def settings_panel(task):
        with gr.Accordion("Settings", open=True):
            with gr.Row():
                num = gr.Slider(**specs["num_samples"], value=1, step=1, label="Number of samples")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                dice = gr.Button("Randomise seed", size="sm")
            with gr.Row():
                guidance = gr.Slider(**specs["guidance"], step=0.1, label="Guidance strength w")
                mode = gr.Radio(**specs["guidance_mode"], label="Guidance mode")
            with gr.Row():
                sampler = gr.Dropdown(**specs["sampler"], label="Sampler")
                steps = gr.Slider(**specs["steps"], step=1, label="Base steps")
                upsample = gr.Checkbox(label="Upsampler on")
        dice.click(ds.random_seed, None, seed, queue=False, **private)
        recommended = [guidance, mode, sampler, steps, upsample]

        @user_errors
        def load_defaults():  # on page load: the task's pipeline is loaded once, on first use
            values = ds.control_values(store.get(task))
            return [values[k] for k in ("guidance", "guidance_mode", "sampler", "steps", "upsample")]

        demo.load(load_defaults, None, recommended, **private)
        return [num, seed, guidance, mode, sampler, steps, upsample]

    parts = {"mask": "", "sketch": " (lines | their distance map)", "depth": " (normals | depth)"}

    def outputs_panel(task):
        gallery = gr.Gallery(label="Samples", columns=2, height=460, format="png", elem_id=f"{task}-gallery")
        with gr.Row():
            condition = gr.Image(
                label="The condition as the model saw it" + parts[task],
                type="pil",
                format="png",
                height=220,
                elem_id=f"{task}-condition",
            )
            settings = gr.JSON(label="Settings used (copy to reproduce)", height=220)
        return [gallery, condition, settings]

    def controls_of(num_samples, seed, guidance, guidance_mode, sampler, steps, upsample):
        """The settings controls every tab shares, by name, for :func:`run`."""
        return dict(
            num_samples=num_samples,
            seed=seed,
            guidance=guidance,
            guidance_mode=guidance_mode,
            sampler=sampler,
            steps=steps,
            upsample=upsample,
        )

    def run(task, condition, controls, notes=(), **kwargs):
        images, cond, record = ds.translate(store.get(task), condition, **controls, notes=notes, **kwargs)
        for note in notes:  # the canvas's; the pipeline's notes (resizing, inversion) are in the settings record
            gr.Info(note)
        return images, cond, record

    def editor(label, colors, brush_size):
        return gr.ImageEditor(
            label=label,
            type="pil",
            image_mode="RGBA",
            format="png",
            sources=("upload",),
            canvas_size=(256, 256),
            height=400,
            layers=False,
            transforms=(),
            brush=gr.Brush(colors=colors, color_mode="fixed", default_size=brush_size),
            value=ds.blank_canvas(256),
        )

    def generate_button():
        return gr.Button("Generate", variant="primary", elem_classes="generate")

    with gr.Blocks(title="PITI: image-to-image translation") as demo:
        gr.Markdown(
            "# PITI: pretraining is all you need for image-to-image translation\n"
            "Translate a label map, a sketch or a depth map into photos. "
            + (
                "The embedded toy models were trained on the project's synthetic world (128 px): "
                "the examples come from that world."
                if scene_size == 128
                else ""
            )
        )
        with gr.Tabs():
            if "mask" in store.tasks:
                with gr.Tab(ds.TASK_TITLES["mask"]), gr.Row():
                    with gr.Column(scale=5):
                        beside = len(ds.palette_classes(palette)[1]) <= ds.LEGEND_BESIDE
                        legend = ds.palette_legend(palette, columns=1 if beside else 4)
                        with gr.Row():
                            canvas = editor(
                                "Label map: paint with the class colours (black = unlabelled), or upload one",
                                ds.brush_colors(palette),
                                8,
                            )
                            if beside:
                                gr.Image(
                                    legend,
                                    label=f"Legend ({palette} palette)",
                                    type="pil",
                                    format="png",
                                    interactive=False,
                                    height=min(legend.height + 60, 400),
                                    buttons=["download"],
                                    scale=0,
                                    min_width=legend.width + 20,
                                )
                        if not beside:
                            with gr.Accordion(f"Legend ({palette} palette)", open=True):
                                gr.Image(
                                    legend,
                                    show_label=False,
                                    type="pil",
                                    format="png",
                                    interactive=False,
                                    buttons=["download", "fullscreen"],
                                )
                        snap = gr.Checkbox(
                            False,
                            label="Snap every colour to the nearest class (for colour maps saved "
                            "with other colours, e.g. as JPEG)",
                            info="Brush strokes are antialiased: colours close to a class colour are "
                            "always snapped to it (the notes say how many pixels).",
                        )
                        with gr.Row():
                            gr.Examples(
                                [[str(s.colormap)] for s in scenes],
                                inputs=[canvas],
                                label="Scenes from the synthetic world",
                            )
                            new_mask = gr.Button("New random scene", scale=0)
                        mask_controls = settings_panel("mask")
                        go = generate_button()
                    with gr.Column(scale=4):
                        mask_out = outputs_panel("mask")

                    @user_errors
                    def mask_fn(
                        canvas,
                        snap,
                        num_samples,
                        seed,
                        guidance,
                        guidance_mode,
                        sampler,
                        steps,
                        upsample,
                        progress=gr.Progress(track_tqdm=True),
                    ):
                        controls = controls_of(num_samples, seed, guidance, guidance_mode, sampler, steps, upsample)
                        colormap, notes = ds.canvas_to_colormap(canvas, palette)
                        return run("mask", colormap, controls, notes, snap=bool(snap), source="canvas")

                    go.click(mask_fn, [canvas, snap] + mask_controls, mask_out, api_name="mask")
                    new_mask.click(
                        lambda: ds.random_scene_files(random_dir, scene_size, palette).colormap.as_posix(),
                        None,
                        canvas,
                        **private,
                    )

            if "sketch" in store.tasks:
                with gr.Tab(ds.TASK_TITLES["sketch"]), gr.Row():
                    with gr.Column(scale=5):
                        src = gr.Radio(
                            ["sketch", "photo"],
                            value="sketch",
                            label="Translate from",
                            info="a sketch (drawn or uploaded), or a photo whose edges are extracted",
                        )
                        with gr.Row():
                            with gr.Column():
                                pad = editor(
                                    "Sketch: white lines on black or dark lines on white (draw or upload)",
                                    ["#ffffff", "#000000"],
                                    2,
                                )
                                gr.Examples([[str(s.sketch)] for s in scenes], inputs=[pad], label="Sketches")
                                pad.input(lambda: "sketch", None, src, queue=False, **private)
                            with gr.Column():
                                photo = gr.Image(
                                    label="Photo", type="pil", image_mode="RGB", sources=("upload",), height=220
                                )
                                edges = gr.Image(
                                    label="Its edges as the model will see them" + parts["sketch"],
                                    type="pil",
                                    format="png",
                                    height=160,
                                    interactive=False,
                                )
                                gr.Examples([[str(s.photo)] for s in scenes], inputs=[photo], label="Photos")
                        new_sketch = gr.Button("New random scene")
                        sketch_controls = settings_panel("sketch")
                        go = generate_button()
                    with gr.Column(scale=4):
                        sketch_out = outputs_panel("sketch")

                    @user_errors
                    def edges_fn(image):  # a photo given (uploaded or an example) is what to translate
                        if image is None:
                            return None, "sketch"
                        preview = ds.preview_condition(store.get("sketch"), image, from_photo=True, source="photo")
                        return preview, "photo"

                    @user_errors
                    def sketch_fn(
                        source,
                        sketch,
                        photo,
                        num_samples,
                        seed,
                        guidance,
                        guidance_mode,
                        sampler,
                        steps,
                        upsample,
                        progress=gr.Progress(track_tqdm=True),
                    ):
                        controls = controls_of(num_samples, seed, guidance, guidance_mode, sampler, steps, upsample)
                        if source == "photo":
                            if photo is None:
                                raise ConditionError("no photo: upload one or pick an example (or use the sketch)")
                            return run("sketch", photo, controls, sketch_from_photo=True, source="photo")
                        return run("sketch", ds.editor_image(sketch, "sketch pad"), controls, source="sketch pad")

                    def random_sketch():
                        return ds.random_scene_files(random_dir, scene_size, palette).sketch.as_posix(), "sketch"

                    photo.change(edges_fn, photo, [edges, src], **private)
                    go.click(sketch_fn, [src, pad, photo] + sketch_controls, sketch_out, api_name="sketch")
                    new_sketch.click(random_sketch, None, [pad, src], **private)

            if "depth" in store.tasks:
                with gr.Tab(ds.TASK_TITLES["depth"]), gr.Row():
                    with gr.Column(scale=5):
                        with gr.Row():
                            depth = gr.File(
                                label="Depth map: 16-bit PNG in metres x 256 (0 = no depth) or .npy in metres",
                                file_types=[".png", ".npy"],
                                type="filepath",
                            )
                            depth_view = gr.Image(
                                label="As the model will see it: normals | depth",
                                type="pil",
                                format="png",
                                height=200,
                                interactive=False,
                            )
                        with gr.Row():
                            gr.Examples([[str(s.depth)] for s in scenes], inputs=[depth], label="Depth maps")
                            new_depth = gr.Button("New random scene", scale=0)
                        depth_controls = settings_panel("depth")
                        go = generate_button()
                    with gr.Column(scale=4):
                        depth_out = outputs_panel("depth")

                    @user_errors
                    def depth_view_fn(path):
                        if path is None:
                            return None
                        condition, name = ds.open_upload(path)
                        return ds.preview_condition(store.get("depth"), condition, source=name)

                    @user_errors
                    def depth_fn(
                        depth_map,
                        num_samples,
                        seed,
                        guidance,
                        guidance_mode,
                        sampler,
                        steps,
                        upsample,
                        progress=gr.Progress(track_tqdm=True),
                    ):
                        controls = controls_of(num_samples, seed, guidance, guidance_mode, sampler, steps, upsample)
                        condition, name = ds.open_upload(depth_map)
                        return run("depth", condition, controls, source=name)

                    depth.change(depth_view_fn, depth, depth_view, **private)
                    go.click(depth_fn, [depth] + depth_controls, depth_out, api_name="depth")
                    new_depth.click(
                        lambda: ds.random_scene_files(random_dir, scene_size, palette).depth.as_posix(),
                        None,
                        depth,
                        **private,
                    )
    return demo


def main(argv=None) -> int:
    args = parse_args(argv)
    store, palette, scene_size = make_store(args)
    workdir = Path(tempfile.mkdtemp(prefix="piti-demo-"))  # example scenes, drawn at start-up
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a terminated app cleans up too
    demo = build(store, palette, scene_size, workdir)
    demo.queue(default_concurrency_limit=1)  # one generation at a time; the others wait in the queue
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(workdir)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
