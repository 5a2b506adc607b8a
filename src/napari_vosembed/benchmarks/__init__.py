"""`vosembed benchmark ...`: speed, memory and accuracy measurements, written as JSON + Markdown.

Every benchmark writes `<out>/<name>.json` and replaces its own section of `docs/benchmarks.md`
(between `<!-- name:start -->` and `<!-- name:end -->`), so the figures in the docs are always
the ones a command produced. Every module of this package that registers a `Benchmark` becomes a
`vosembed benchmark` command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..registry import Registry


@dataclass(frozen=True)
class Benchmark:
    """`vosembed benchmark NAME`: `arguments(parser)` adds its options, `run(args)` measures and
    writes the report. `held_out`: it also takes the options of the benchmarks on the sequences our
    split holds out (`held_out_arguments`)."""

    name: str
    summary: str
    description: str
    run: Callable[[argparse.Namespace], object]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    held_out: bool = False


BENCHMARKS: Registry[Benchmark] = Registry(__name__)


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    return BENCHMARKS.register(benchmark.name, benchmark)


def available_benchmarks() -> dict[str, Benchmark]:
    return dict(sorted(BENCHMARKS.all().items()))


def held_out_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the benchmarks on the sequences our split holds out of training."""
    parser.add_argument("data", nargs="?", default="../shared/data/davis2016-train", help="root of sequences")
    parser.add_argument("--sequences", nargs="+", help="sequence names (default: the held-out part of our split)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    report_arguments(parser)


def report_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a benchmark writes: its JSON results and the Markdown file whose section it replaces."""
    parser.add_argument("--out", default="benchmarks", help="folder for the JSON results")
    parser.add_argument("--docs", default="docs/benchmarks.md", help="Markdown file whose section is replaced")


def machine() -> dict:
    """What the figures were measured on, and how busy the machine was (1-minute load average)."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB: VmHWM where /proc has it (getrusage's
    maximum also counts what the parent held when it forked a worker, kept through exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def long_clip(data_root: Path, n_frames: int) -> Path:
    """A frame folder of `n_frames` frames linked from the sequences under `data_root`, in order.

    DAVIS sequences are shorter than 100 frames; the benchmark needs one long 480p video.
    """
    from ..io import list_sequences, read_sequence

    folder = Path(tempfile.mkdtemp(prefix="vosembed-clip-"))
    t = 0
    for name in list_sequences(data_root):
        seq = read_sequence(data_root / name)
        for frame_name in seq.video.frame_names:
            src = next((data_root / name / "frames").glob(f"{frame_name}.*"))
            (folder / f"{t:05d}{src.suffix}").symlink_to(src.resolve())
            t += 1
            if t == n_frames:
                return folder
    raise ValueError(f"{data_root} holds only {t} frames, fewer than the {n_frames} asked for")


def write_report(name: str, payload: dict, markdown: str, out_dir: Path, docs: Path) -> None:
    """Write `<out_dir>/<name>.json` and put `markdown` into its section of `docs`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2))
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text)
