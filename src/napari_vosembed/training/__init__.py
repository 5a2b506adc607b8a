"""Training of the networks we ship (`vosembed train NAME`): the samplers of the papers, on our
split of a sequence root. Every module of this package that registers a `Trainer` becomes a
`vosembed train` command, whose options are the fields of the trainer's config dataclass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class Trainer:
    """`vosembed train NAME`: `config` is a dataclass (each field an option, its metadata "help" the
    help text); `run(data, out, config, device, command, plot)` is a progress generator returning
    the path of the saved network; `out`: where it goes by default."""

    name: str
    summary: str
    description: str
    config: type
    run: Callable
    out: str


TRAINERS: Registry[Trainer] = Registry(__name__, skip=("common",))


def register_trainer(trainer: Trainer) -> Trainer:
    return TRAINERS.register(trainer.name, trainer)


def available_trainers() -> dict[str, Trainer]:
    return dict(sorted(TRAINERS.all().items()))
