"""The `vosembed` command: segment, evaluate, fetch-models, demo."""

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


def _parse_frame_value(text: str, option: str) -> tuple[int, str]:
    frame, sep, value = text.partition("=")
    if not sep or not frame.strip().lstrip("-").isdigit():
        raise PromptError(f"{option} {text!r}: expected FRAME=VALUE, e.g. {option} 0=...")
    return int(frame), value


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
    from .io import write_ctc, write_png_labels, write_tiff_labels

    if fmt == "png":
        write_png_labels(labels, out, frame_names, overwrite=overwrite)
    elif fmt == "tiff":
        write_tiff_labels(labels, out / "labels.tif" if out.suffix.lower() not in (".tif", ".tiff") else out,
                          overwrite=overwrite)
    else:
        write_ctc(labels, out, overwrite=overwrite)


def cmd_segment(args) -> int:
    from .io import open_video
    from .methods import iter_segment

    video = open_video(args.video)
    prompts = build_prompts(args)
    labels = drive(iter_segment(video, prompts, args.method, args.device, **_parse_params(args.param)), args.quiet)
    write_labels(labels, Path(args.out), video.frame_names, args.format, args.overwrite)
    objects = sorted(int(v) for v in np.unique(labels) if v)
    print(f"wrote {len(labels)} frames with objects {objects} to {args.out}")
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


def cmd_evaluate(args) -> int:
    from .metrics import evaluate_sequence, summarize

    results = {}
    for name, pred, gt in _evaluation_pairs(Path(args.pred_dir), Path(args.gt_dir)):
        results[name] = evaluate_sequence(pred, gt, protocol=args.protocol)
    report = summarize(results)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def format_report(report: dict) -> str:
    """A fixed-width table of J, F and J&F (mean, recall, decay) per sequence and global."""
    head = f"{'sequence':<24}{'J&F':>8}{'J mean':>8}{'J rec':>8}{'J dec':>8}{'F mean':>8}{'F rec':>8}{'F dec':>8}"
    rows = [head, "-" * len(head)]

    keys = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")

    def row(name, r):
        return f"{name:<24}" + "".join(f"{r[k]:>8.3f}" for k in keys)

    rows += [row(name, r) for name, r in report["sequences"].items()]
    rows.append(row("global", report["global"]))
    return "\n".join(rows)


def cmd_fetch_models(args) -> int:
    from .engine.fetch import fetch_models

    print(f"ISNet backbone ready at {fetch_models(force=args.force)}")
    return 0


def cmd_demo(args) -> int:
    from . import demo
    from .methods import available_methods

    if not available_methods():
        print("No segmentation method is installed yet, so the demo has nothing to run "
              "(the sample clip is there: `vosembed demo` will segment it once a method lands).")
        return 0
    return demo.run(Path(args.out), device=args.device, quiet=args.quiet)


def cmd_benchmark_embed(args) -> int:
    from .benchmarks import embed

    embed.run(args.video, Path(args.data), args.frames, args.device, args.threads, args.warmup,
              Path(args.out), Path(args.docs))
    return 0


def cmd_benchmark_pml(args) -> int:
    from .benchmarks import pml

    pml.semi_supervised(Path(args.data), args.sequences, args.device, Path(args.out), Path(args.docs))
    return 0


def cmd_benchmark_clicks(args) -> int:
    from .benchmarks import pml

    pml.clicks(Path(args.data), args.sequences, args.device, args.max_clicks_per_frame, Path(args.out),
               Path(args.docs), Path(args.plot), args.seeds)
    return 0


def cmd_benchmark_tvos(args) -> int:
    from .benchmarks import tvos

    tvos.run(Path(args.data), args.sequences, Path(args.cells) if args.cells else None, args.device, args.threads,
             args.dense_frames, Path(args.out), Path(args.docs))
    return 0


def _train(args, module, name: str, **options) -> int:
    """Train `module.TrainConfig(**options)` plus the options every head takes (`module.run`, a
    training generator, with a progress bar); say where the head went."""
    from .engine.cache import EmbeddingSettings

    config = module.TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed, mirror=args.mirror,
                                settings=EmbeddingSettings(scale=args.scale), **options)
    command = "vosembed " + " ".join(args.argv)
    out = drive(module.run(Path(args.data), Path(args.out), config, args.device, command,
                           Path(args.plot) if args.plot else None), args.quiet)
    print(f"{name} head saved to {out} (training record: {out.with_suffix('.json')})")
    return 0


def cmd_train_pml(args) -> int:
    from .training import pml

    return _train(args, pml, "PML", batch=args.batch, margin=args.margin, loss=args.loss, dropout=args.dropout,
                  members=args.members)


def cmd_train_tvos(args) -> int:
    from .training import tvos

    return _train(args, tvos, "TVOS", clips=args.clips, crops=args.crops, crop=args.crop)


def _train_parser(train, name: str, summary: str, description: str, steps: int):
    """The sub-command `train NAME` with the options every head's training takes."""
    t = train.add_parser(name, help=summary, description=description + " Every fourth sequence (alphabetical) is held "
                         "out, the rest train. Embeddings are cached first.")
    t.add_argument("--data", required=True, help="root of training sequences (SEQ/frames + SEQ/masks)")
    t.add_argument("--out", default=f"src/napari_vosembed/models/{name}_head.pt", help="where the head is written")
    t.add_argument("--plot", help="PNG of the loss curve")
    t.add_argument("--steps", type=int, default=steps)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--scale", type=float, default=None,
                   help="frame scale of the backbone embeddings (default: about 0.1 megapixel, 0.5 for 480p)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                   help="train on each sequence's mirror image too (default: on)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return t


def _held_out_benchmark(bench, name: str, summary: str, description: str, func):
    """The sub-command `benchmark NAME` with the options of the benchmarks on our held-out sequences."""
    b = bench.add_parser(name, help=summary, description=description + " On the sequences of DATA that our split "
                         "holds out of training, unless --sequences names others.")
    b.add_argument("data", nargs="?", default="../shared/data/davis2016-train", help="root of sequences")
    b.add_argument("--sequences", nargs="+", help="sequence names (default: the held-out part of our split)")
    b.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    b.add_argument("--out", default="benchmarks", help="folder for the JSON results")
    b.add_argument("--docs", default="docs/benchmarks.md", help="Markdown file whose section is replaced")
    b.set_defaults(func=func)
    return b


def build_parser() -> argparse.ArgumentParser:
    from .methods import available_methods

    parser = argparse.ArgumentParser(prog="vosembed", description=__doc__)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    methods = list(available_methods())
    p = sub.add_parser("segment", help="segment a video from masks, clicks or boxes",
                       description="Segment VIDEO and write one label image per frame into --out.")
    p.add_argument("video", help="video file (mp4, avi, mov, webm, mkv), frame folder, or (OME-)TIFF stack")
    p.add_argument("--method", default=None,
                   help=f"segmentation method (installed: {', '.join(methods) or 'none yet'}; default: the best)")
    p.add_argument("--out", required=True, help="output folder (or .tif file with --format tiff)")
    p.add_argument("--mask", action="append", metavar="FRAME=PNG",
                   help="label image of a frame, e.g. 0=masks/00000.png (0 = background); repeatable")
    p.add_argument("--points", metavar="CSV", help="clicks: a CSV with columns frame,y,x,label (label 0 = negative)")
    p.add_argument("--box", action="append", metavar="FRAME=x0,y0,x1,y1[,label]",
                   help="a box around an object on a frame, in pixels; repeatable")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where networks run")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a method parameter; repeatable")
    p.add_argument("--format", default="png", choices=["png", "tiff", "ctc"],
                   help="indexed PNG per frame (DAVIS palette), one multi-page TIFF, or Cell Tracking Challenge")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="J, F and J&F of predictions against ground truth",
                       description="Score PRED_DIR against GT_DIR as the DAVIS benchmark does. GT_DIR is a "
                       "sequence folder (SEQ/masks or DAVIS JPEGImages/480p/SEQ), a folder of label images, "
                       "or a root of sequences (then PRED_DIR holds one folder per sequence).")
    p.add_argument("pred_dir")
    p.add_argument("gt_dir")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--protocol", default="semi-supervised", choices=["semi-supervised", "all"],
                   help="semi-supervised skips the first and last frame (DAVIS); 'all' scores every frame")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fetch-models", help="download and verify the ISNet backbone into the cache",
                       description="Fetch the ISNet backbone (npm package @imgly/background-removal-data) "
                       "into the cache (VOSEMBED_CACHE_DIR overrides the location).")
    p.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    p.set_defaults(func=cmd_fetch_models)

    p = sub.add_parser("demo", help="segment the bundled sample clip and score it",
                       description="Segment the sample clip with the best installed method, write masks and "
                       "an overlay image, and print J&F against its ground truth.")
    p.add_argument("--out", default="demo-output", help="output folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("benchmark", help="measure speed, memory and accuracy (JSON + Markdown)")
    bench = p.add_subparsers(dest="benchmark", required=True)
    b = bench.add_parser("embed", help="backbone time per frame, peak RSS and cache size per setting",
                         description="Embed a long video with each backbone setting in a fresh process: "
                         "median time per frame after warm-up, peak RSS, cache size; then a second run that "
                         "must find every frame cached.")
    b.add_argument("--video", help="video to embed (default: --frames frames linked from --data)")
    b.add_argument("--data", default="../shared/data/davis2016-train", help="root of sequences to build the clip from")
    b.add_argument("--frames", type=int, default=100, help="length of the clip built from --data")
    b.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--warmup", type=int, default=3, help="frames excluded from the median")
    b.add_argument("--out", default="benchmarks", help="folder for the JSON results")
    b.add_argument("--docs", default="docs/benchmarks.md", help="Markdown file whose 'embed' section is replaced")
    b.set_defaults(func=cmd_benchmark_embed)

    _held_out_benchmark(bench, "pml", "PML J&F with the first mask, retrieval time per frame and per click",
                        "PML J&F with the first mask, retrieval time per frame and per click, with the trained "
                        "head and with raw backbone features.", cmd_benchmark_pml)
    b = _held_out_benchmark(bench, "clicks", "the click robot: J versus clicks per frame (PNG + JSON)",
                            "The click robot: J versus clicks per frame (PNG + JSON), with the trained head and with "
                            "raw backbone features.", cmd_benchmark_clicks)
    b.add_argument("--max-clicks-per-frame", type=float, default=1.0)
    b.add_argument("--plot", default="docs/images/pml-clicks.png", help="where the curve is drawn")
    b.add_argument("--seeds", type=_positive_int, default=1,
                   help="runs of the robot per sequence (seeds 0 to N - 1), averaged: one seed moves the curve by "
                        "several points")
    b = _held_out_benchmark(bench, "tvos", "TVOS J&F, propagation time per frame (fast and dense) and peak RSS",
                            "TVOS from the mask of frame 0 (trained head with and without global matching, raw "
                            "backbone features) and on a Cell Tracking Challenge sequence; the fast propagation "
                            "against the dense affinity on the same inputs, in the same run.", cmd_benchmark_tvos)
    b.add_argument("--cells", default="../shared/data/ctc-dic-hela-01",
                   help="a multi-object sequence (every object of frame 0 propagates); '' to skip")
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--dense-frames", type=int, default=5, help="frames timed with the dense reference")

    p = sub.add_parser("train", help="train the heads we ship")
    train = p.add_subparsers(dest="head", required=True)
    t = _train_parser(train, "pml", "the PML embedding head (triplet loss of Chen et al. 2018, Eq. 1)",
                      "Train the PML head on DAVIS-style sequence folders.", steps=800)
    t.add_argument("--batch", type=int, default=4, help="triplets (three frames each) per step")
    t.add_argument("--margin", type=float, default=0.3, help="alpha of Eq. 1")
    t.add_argument("--loss", default="pml", choices=["pml", "triplet", "contrastive"])
    t.add_argument("--dropout", type=float, default=0.0,
                   help="share of the backbone features zeroed in training (a regulariser; 0: the paper)")
    t.add_argument("--members", type=_positive_int, default=1,
                   help="heads trained one after the other (seeds --seed, --seed + 1, ...) into one ensemble head "
                        "whose similarity is the mean of theirs (1: the paper)")
    t.set_defaults(func=cmd_train_pml)

    t = _train_parser(train, "tvos", "the TVOS embedding head (propagation cross-entropy of Zhang et al. 2020, Eq. 8)",
                      "Train the TVOS head on DAVIS-style sequence folders.", steps=1500)
    t.add_argument("--clips", type=int, default=1, help="target frames (each with 9 reference frames) per step")
    t.add_argument("--crops", type=int, default=4, help="crops of each target frame")
    t.add_argument("--crop", type=int, default=32, help="crop side in grid cells")
    t.set_defaults(func=cmd_train_tvos)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded with what it makes (the training record's command)
    try:
        return args.func(args)
    except VosEmbedError as err:
        print(f"vosembed {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vosembed {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
