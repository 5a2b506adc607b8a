"""The dock widget: segment objects through a video from clicks, boxes and painted masks.

What a user does: choose the image layer and a method, make a clicks layer (New), click an
object (Shift-click, or the "negative" toggle, for background). With a live method (an interactive
one, or any method reading clicks through the prompt model) the Labels layer
"<image> segmentation" follows every edit: the frame in view at once, the other
frames in the background (`live.Live`). "Compute embeddings" does ahead of time what the first
click would wait for. "Segment all frames" runs the method on the whole video; methods that
propagate also run forward / backward from the frame in view. The object list names and deletes
objects; the confidence track shows how sure the method was of each frame; a Tracks layer
"<image> tracks" follows each object's centroid. After Segment all frames with a method whose
session tracks boxes (`session.boxes`), the Shapes layer "<image> tracked boxes" shows each
object's box on each frame (an option of methods that track boxes; on by default).

The dock knows no method by name: what it offers comes from the method's class (`live`,
`propagates`, `needs_prompts`, its `Params`), and every run goes through the method's session
(`methods.base`), kept in a `SessionStore`. Long work runs in thread workers with a progress bar
and the time left, and can be cancelled; errors become notifications.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton
from qtpy.QtWidgets import QComboBox, QGroupBox, QVBoxLayout, QWidget

from ..errors import VosEmbedError
from ..methods import available_methods
from . import layers as L
from .confidence_track import ConfidenceTrack
from .form import ParamsForm
from .live import Live
from .objects import ObjectList
from .output import Output
from .progress_panel import ProgressPanel
from .prompt_layers import PromptLayers, layer_class, reset_keeping
from .runner import Runner
from .workers import guarded

#: Embedding settings of sessions opened without a trained head (None: the library default).
#: Tests set the tiny backbone here.
EMBEDDING_SETTINGS = None
DEVICES = ("auto", "cpu", "cuda")
#: What a user of the clicks layer needs to know, shown under the prompt layers.
CLICK_HINT = "click: object · Shift-click: background · N: new object · a row below: add to that object"


class SegmentWidget(QWidget):
    """Segment objects through the video of an Image layer (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__()
        # napari hands plugins a proxy of the viewer whose every attribute is a fresh proxy, so
        # layers would not be identical to themselves and proxies put into the layer selection
        # break it (napari#5767). We only use public API, on the real objects.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.progress = ProgressPanel()
        self.status = self.progress.status
        self.runner = Runner(self._set_status, self._update_state, EMBEDDING_SETTINGS, on_step=self.progress.step)
        self.store = self.runner.store
        self.live = Live(self)
        self.runner.on_idle = self.live.schedule
        self.runner.on_video = self._video_done
        self._refreshing = False
        self._image = None
        self._build()
        self._connect_viewer()
        self.reset_choices()
        self._on_method_changed()

    # -- construction ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.image = ComboBox(label="image", choices=self._image_choices,
                              tooltip="the video (T, Y, X) or (T, Y, X, RGB) to segment")
        self.method = ComboBox(label="method", choices=self._method_choices)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto",
                               tooltip="auto: the GPU when PyTorch sees one, else the CPU")
        self.embed_button = PushButton(text="Compute embeddings",
                                       tooltip="compute now, with a progress bar, what the first click would wait "
                                               "for (cached on disk; `vosembed embed VIDEO` does it ahead of time)")
        self.form = ParamsForm(self._on_settings_changed)
        self.prompt_layers = PromptLayers(self.viewer, lambda: self.output.value if hasattr(self, "output") else None,
                                          self._on_prompts_edited, guarded, self._require_image)
        p = self.prompt_layers
        self.points, self.boxes, self.masks, self.mask_kind = p.points, p.boxes, p.masks, p.mask_kind
        self.object_id, self.negative = p.object_id, p.negative
        self.out = Output(self.viewer, p, self.reset_choices)
        self.output = self.out.combo
        self.objects = ObjectList(p, lambda: self.output.value, self._names_changed, guarded)
        self.out.names = self.objects.name
        self.instant = CheckBox(text="update as I click", value=True,
                                tooltip="every edit of the prompts updates the output at once")
        self.write_boxes = CheckBox(text="write tracked boxes as a Shapes layer", value=True,
                                    tooltip="after Segment all frames, the boxes the method tracked become the "
                                            "Shapes layer \"<image> tracked boxes\" (one rectangle per object and "
                                            "frame), replaced at each run")
        self.segment_button = PushButton(text="Segment all frames")
        self.backward_button = PushButton(text="◀ Propagate backward")
        self.forward_button = PushButton(text="Propagate forward ▶")
        self.cancel_button = PushButton(text="Cancel")
        self.hint = Label(value="")
        self.confidence = ConfidenceTrack(self.go_to_frame)
        for combo in (self.image, self.method, self.output, self.points, self.boxes, self.masks):
            combo.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)

        top = Container(widgets=[self.image, self.method, self.device, self.embed_button], labels=True)
        self._prompt_box = QGroupBox("Prompts")
        box_layout = QVBoxLayout(self._prompt_box)
        box_layout.setContentsMargins(4, 4, 4, 4)
        click_hint = Label(value=CLICK_HINT)
        for part in (p.container.native, click_hint.native, self.objects.native):
            box_layout.addWidget(part)
        run = Container(widgets=[
            self.output, self.instant, self.write_boxes, self.segment_button,
            Container(widgets=[self.backward_button, self.forward_button], layout="horizontal"),
            self.cancel_button,
        ], labels=True)
        for c in (top, run):
            c.margins = (0, 0, 0, 0)
        layout = QVBoxLayout(self)
        for part in (top.native, self.form.basic.native, self.form.advanced_box, self._prompt_box, run.native,
                     self.hint.native, self.progress.native, self.confidence.native):
            layout.addWidget(part)
        layout.addStretch(1)
        for label in (click_hint, self.hint):
            label.native.setWordWrap(True)

        # the Qt signal: magicgui does not report a change to a None choice ("(none)")
        self.image.native.currentIndexChanged.connect(self._on_image_changed)
        self.method.changed.connect(self._on_method_changed)
        self.device.changed.connect(self._on_settings_changed)
        for combo in (self.points, self.boxes):
            combo.native.currentIndexChanged.connect(self.live.encode_soon)
        self.instant.changed.connect(self._on_settings_changed)
        self.embed_button.changed.connect(guarded(self.compute_embeddings))
        self.segment_button.changed.connect(guarded(self.segment_all))
        self.forward_button.changed.connect(guarded(lambda: self.propagate(+1)))
        self.backward_button.changed.connect(guarded(lambda: self.propagate(-1)))
        self.cancel_button.changed.connect(guarded(self.cancel))

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        self._connections = [(events.inserted, self._on_layer_inserted), (events.removed, self._on_layer_removed),
                             (self.viewer.dims.events.current_step, self._frame_changed)]
        self._connections += [(layer.events.name, self.reset_choices) for layer in self.viewer.layers]
        for emitter, callback in self._connections:
            emitter.connect(callback)
        # napari deletes dock widgets without closing them: let go of the viewer's events then
        self.destroyed.connect(_disconnecter(self._connections, self.prompt_layers))

    def _alive(self) -> bool:
        """False once Qt has deleted the widget (napari events may still arrive)."""
        try:
            self.objectName()
        except RuntimeError:
            return False
        return True

    # -- choices -----------------------------------------------------------------------------------
    def _image_choices(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, layer_class("image"))]

    def _method_choices(self, _widget=None) -> list:
        return [(cls.title or name, name) for name, cls in available_methods().items()] or \
            [("(no method installed)", None)]

    def reset_choices(self, *_) -> None:
        """Refresh every layer list (napari calls this when layers come and go)."""
        if not self._alive() or self._refreshing:
            return
        self._refreshing = True
        try:
            for combo in (self.image, self.method, self.output):
                reset_keeping(combo)
            self.prompt_layers.reset_choices()
        finally:
            self._refreshing = False
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[0]
        self._on_image_changed()  # the image layer may have gone
        self.prompt_layers.changed()  # a prompt layer may have gone

    def _on_layer_inserted(self, event) -> None:
        if not self._alive():
            return
        event.value.events.name.connect(self.reset_choices)
        self._connections.append((event.value.events.name, self.reset_choices))
        self.reset_choices()

    def _on_layer_removed(self, event) -> None:
        if not self._alive():
            return
        layer = event.value
        self._connections[:] = [(e, c) for e, c in self._connections if e is not layer.events.name]
        layer.events.name.disconnect(self.reset_choices)
        self.prompt_layers.unwatch(layer)
        self.reset_choices()

    # -- the method and its parameters -------------------------------------------------------------
    def method_class(self):
        name = self.method.value
        return available_methods().get(name) if name else None

    def params(self) -> dict:
        """The chosen method's parameters, by name."""
        return self.form.values()

    def _method(self):
        """The chosen method with the dock's parameters and device (a clear error when there is none)."""
        cls = self.method_class()
        if cls is None:
            raise VosEmbedError("no segmentation method is installed yet")
        return cls(device=self.device.value, **self.params())

    def _update_state(self) -> None:
        cls = self.method_class()
        busy = self.runner.busy
        self._prompt_box.setEnabled(cls is None or cls.needs_prompts)
        self.segment_button.enabled = self.embed_button.enabled = cls is not None and not busy
        propagates = cls is not None and cls.propagates
        for button in (self.forward_button, self.backward_button):
            button.enabled = propagates and not busy
        live = self.live.method_is_live()
        self.instant.enabled = live
        self.write_boxes.visible = cls is not None and cls.tracks_boxes
        why = []
        if cls is not None and not propagates:
            why.append(f"{cls.title or cls.name}: segments all frames at once, so it does not propagate")
        if cls is not None and not cls.needs_prompts:
            why.append("it needs no prompts: press Segment all frames")
        elif cls is not None and not live:
            why.append("this method does not update as you click: add prompts, then Segment all frames")
        self.hint.value = "; ".join(why)
        self.hint.visible = bool(why)
        self.cancel_button.enabled = self.runner.running
        if not self.runner.running:
            self.progress.idle()
        if cls is not None:
            self.method.tooltip = cls.description

    def _set_status(self, text: str) -> None:
        self.progress.message(text)

    def _on_image_changed(self, *_) -> None:
        if self._refreshing or not self._alive() or self.image.value is self._image:
            return
        self._image = self.image.value
        self.store.drop(keep=None if self._image is None else self._image.unique_id)
        self.confidence.set_values(None)
        self.live.signature = None
        self.live.schedule()

    def _on_method_changed(self, *_) -> None:
        self.form.build(self.method_class())
        self._update_state()
        self.live.signature = None
        self.live.schedule()

    def _on_settings_changed(self, *_) -> None:
        self._update_state()
        self.live.schedule()

    def _on_prompts_edited(self) -> None:
        """After an edit of the prompts: the object list, then the live update."""
        image = self.image.value
        if image is not None and self._alive():
            try:
                self.objects.show(self.prompts(image))
            except VosEmbedError:
                pass  # the live update (or the next run) says what is wrong
        self.live.schedule()

    def _names_changed(self) -> None:
        image = self.image.value
        if image is not None and self.output.value is not None:
            self.out.name_objects(self.output.value)
            self.out.tracks(image, self.output.value.data)

    def _frame_changed(self, *_) -> None:
        self.live.encode_soon()
        image = self.image.value
        if image is not None:
            self.confidence.set_current(L.frame_in_view(self.viewer, image))

    def go_to_frame(self, t: int) -> None:
        """Show frame t of the image in the viewer."""
        image = self._require_image()
        axis = self.viewer.dims.ndim - image.ndim
        self.viewer.dims.set_point(axis, float(image.data_to_world([t] + [0] * (image.ndim - 1))[0]))

    def _video_done(self, session, labels) -> None:
        """A result for the whole video: its confidence per frame and the objects' tracks."""
        image = self.image.value
        values, before = session.confidence, self.confidence.values
        if values is not None and before is not None and len(before) == len(values):
            values = np.where(np.isnan(values), before, values)  # a one-way run keeps the other side's
        self.confidence.set_values(values)
        if image is not None:
            self.confidence.set_current(L.frame_in_view(self.viewer, image))
            self.out.tracks(image, labels)

    # -- prompt layers -----------------------------------------------------------------------------
    def _require_image(self):
        image = self.image.value
        if image is None:
            raise VosEmbedError("no image layer: open a video first (File > Open, or drag it in)")
        L.video_shape(image)
        return image

    def add_points_layer(self):
        return self.prompt_layers.add_points_layer()

    def add_boxes_layer(self):
        return self.prompt_layers.add_boxes_layer()

    def add_mask_layer(self):
        return self.prompt_layers.add_mask_layer()

    def prompts(self, image=None):
        """Everything in the chosen prompt layers, in the image's data coordinates."""
        return self.prompt_layers.prompts(image or self._require_image())

    # -- runs --------------------------------------------------------------------------------------
    def _run(self, start: int | None, direction: int) -> None:
        """The chosen method on every frame (`start` None) or one way from `start`, into the output."""
        method = self._method()
        image = self._require_image()
        shape = L.video_shape(image)
        prompts = self.prompts(image)
        if method.needs_prompts:
            prompts.validate(*shape)
        frames = range(shape[0]) if start is None else range(start, shape[0]) if direction > 0 else range(start + 1)
        desc = (f"{method.name} on all frames" if start is None
                else f"{method.name} {'forward' if direction > 0 else 'backward'} from frame {start}")

        def write(labels):
            self.out.write(image, ((t, labels[t]) for t in frames))

        then = (lambda session: self._write_tracked_boxes(image, session)) if start is None else None
        self.runner.run(image.unique_id, L.image_video(image), method, prompts, start, direction, desc, write, then)

    def _write_tracked_boxes(self, image, session) -> None:
        """After a run over all frames, the boxes the session tracked (if any) as the Shapes layer
        "<image> tracked boxes", when the option is on."""
        boxes = getattr(session, "boxes", None)
        if boxes is not None and self.write_boxes.value:
            self.out.boxes(image, boxes)

    def compute_embeddings(self) -> None:
        """Compute what the chosen method needs before the first click, with a progress bar."""
        image = self._require_image()
        self.runner.embed(image.unique_id, L.image_video(image), self._method())

    def segment_all(self) -> None:
        """Run the chosen method on every frame and write the result into the output layer."""
        self._run(None, 0)

    def propagate(self, direction: int) -> None:
        """Run a propagating method from the frame in view forward (+1) or backward (-1)."""
        cls = self.method_class()
        if cls is None or not cls.propagates:
            raise VosEmbedError(f"method {self.method.value!r} does not propagate; use Segment all frames")
        self._run(L.frame_in_view(self.viewer, self._require_image()), direction)

    # -- control -----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop every running job; what was written stays, the rest is dropped."""
        self.live.stop()
        self.runner.cancel()
        self._set_status("cancelled")
        self._update_state()

    def running(self) -> bool:
        """True while a job (embedding, segmentation, the background update) is under way."""
        return self.runner.running or self.live.waiting or self.prompt_layers.pending

    def wait(self, timeout_s: float = 600.0) -> bool:
        """Block until no job runs (for scripts and the napari console; the widget itself never
        waits). Processes Qt events meanwhile; True when everything finished in time."""
        import time

        from qtpy.QtCore import QCoreApplication

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            QCoreApplication.processEvents()
            if not self.running():
                return True
            time.sleep(0.01)
        return False

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.cancel()
        self.prompt_layers.unwatch_all()
        super().closeEvent(event)


def _disconnecter(connections, prompt_layers):
    """A callback (holding no reference to the widget's Qt side) that disconnects everything."""

    def disconnect(*_):
        for emitter, callback in connections:
            emitter.disconnect(callback)
        prompt_layers.unwatch_all()

    return disconnect
