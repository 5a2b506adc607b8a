"""Progress reports of long jobs, and a driver that draws them as terminal progress bars.

Long work (embedding, training, propagation) is a generator that yields `Progress` and returns
its result; the CLI drives it with `drive`, the napari widget with a `thread_worker`.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """`done` of `total` steps of `stage` are finished."""

    done: int
    total: int
    stage: str


def drive(gen: Generator, quiet: bool = False):
    """Run a progress generator to its end with one tqdm bar per stage; return its value."""
    from tqdm import tqdm

    bar, stage = None, None
    try:
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                return stop.value
            if quiet:
                continue
            if step.stage != stage:
                if bar is not None:
                    bar.close()
                stage = step.stage
                bar = tqdm(total=step.total, desc=stage, unit="step", file=sys.stderr)
            bar.n = step.done
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
