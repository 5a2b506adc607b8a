"""The dock widget: segment objects through a video from clicks, boxes and painted masks.

What a user does: choose the image layer and a method, make a clicks layer (New), click an
object (Shift-click, or the "negative" toggle, for background), and with PML the Labels layer
"<image> segmentation" follows every click: the frame in view at once, the other frames in the
background. "Segment all frames" runs the chosen method on the whole video; methods that
propagate also run forward / backward from the frame in view. Long work runs in thread workers
with napari progress bars and can be cancelled; errors become notifications.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton, SpinBox, create_widget
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGroupBox, QSizePolicy, QVBoxLayout, QWidget
from superqt import QCollapsible

from ..errors import PromptError, VosEmbedError
from ..methods import available_methods, iter_segment
from ..prompts import SCRIBBLE_BACKGROUND, Prompts, masks_digest
from . import layers as L
from .workers import Job, notify_error, sync_workers

#: Embedding settings for PML sessions opened without a trained head (None: the library default).
#: Tests set the tiny backbone here.
EMBEDDING_SETTINGS = None
#: Edits closer together than this are handled as one (the live update after a burst of events).
LIVE_DELAY_MS = 40
DEVICES = ("auto", "cpu", "cuda")
#: Key that starts a new object while a clicks or boxes layer is active (unused by napari there).
NEW_OBJECT_KEY = "n"
#: Methods with an interactive session that follows every click.
LIVE_METHODS = ("pml",)
#: The dock's PML parameters that the session and its views take.
SESSION_OPTIONS = ("k_mask", "k_click", "refine", "click_propagation")


def _param_specs(cls):
    """(name, type, default, advanced, help, widget options) of each field of `cls.Params`; the
    options (e.g. min, max, step) come from the field's metadata "widget"."""
    module = sys.modules.get(cls.__module__)
    try:
        hints = typing.get_type_hints(cls.Params, globalns=vars(module) if module else None)
    except Exception:  # noqa: BLE001 - unresolvable annotation: fall back to the default's type
        hints = {}
    for i, f in enumerate(dataclasses.fields(cls.Params)):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if f.name == "head" and default == "default":
            head = getattr(module, "DEFAULT_HEAD", None)
            if head is not None and not Path(head).is_file():
                default = "none"  # no trained head installed: raw features
        advanced = bool(f.metadata.get("advanced", i >= 2))
        help_text = f.metadata.get("help", "")
        yield (f.name, hints.get(f.name, type(default) if default is not None else str), default, advanced, help_text,
               dict(f.metadata.get("widget", {})))


def _optional_of(annotation):
    """X for an `Optional[X]` / `X | None` annotation of a simple type, else None."""
    import types

    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and args[0] in (int, float, str):
        return args[0]
    return None


def _layer_class(kind: str):
    import napari.layers

    return {"image": napari.layers.Image, "points": napari.layers.Points, "shapes": napari.layers.Shapes,
            "labels": napari.layers.Labels}[kind]


class SegmentWidget(QWidget):
    """Segment objects through the video of an Image layer (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__()
        # napari hands plugins a proxy of the viewer whose every attribute is a fresh proxy, so
        # layers would not be identical to themselves and proxies put into the layer selection
        # break it (napari#5767). We only use public API, on the real objects.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._session = None
        self._session_key = None
        self._session_job: Job | None = None
        self._after_session: list = []
        #: (key, session): the session whose head was fine-tuned on the masks of `key` (`_tuned_key`)
        self._tuned: tuple | None = None
        #: (key, session): the method's own session of the last run of a method that shares the PML
        #: session (TVOS), for the next run with the same parameters
        self._method_session: tuple | None = None
        self._run_job: Job | None = None
        self._live_job: Job | None = None
        self._live_pending = False
        self._live_signature = None
        self._watched: dict = {}
        self._mask_version = 0
        self._writing = False
        self._refreshing = False
        self._prompt_layers = None
        self._image = None
        self._param_widgets: list = []
        self._converters: dict = {}

        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_update)
        self._mask_timer = QTimer(self)
        self._mask_timer.setSingleShot(True)
        self._mask_timer.setInterval(0)
        self._mask_timer.timeout.connect(self._on_prompt_edit)

        self._build()
        self._connect_viewer()
        self.reset_choices()
        self._rebuild_params()
        self._update_state()

    # -- construction ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.image = ComboBox(label="image", choices=self._image_choices,
                              tooltip="the video (T, Y, X) or (T, Y, X, RGB) to segment")
        self.method = ComboBox(label="method", choices=self._method_choices)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto",
                               tooltip="auto: the GPU when PyTorch sees one, else the CPU")
        self._basic = Container(labels=True)
        self._advanced = Container(labels=True)
        self._advanced_box = QCollapsible("Advanced parameters")
        self._advanced_box.addWidget(self._advanced.native)

        self.points = ComboBox(label="clicks", choices=lambda w: self._layer_choices("points"),
                               tooltip="Points layer: click = object, Shift-click = background")
        self.new_points = PushButton(text="New")
        self.boxes = ComboBox(label="boxes", choices=lambda w: self._layer_choices("shapes"),
                              tooltip="Shapes layer with rectangles around objects")
        self.new_boxes = PushButton(text="New")
        self.masks = ComboBox(label="masks", choices=lambda w: self._layer_choices("labels"),
                              tooltip="Labels layer painted on any frames")
        self.mask_kind = ComboBox(choices=("mask", "scribble"), value="mask",
                                  tooltip="mask: painted frames are complete (0 = background); "
                                          f"scribble: only strokes count (label {SCRIBBLE_BACKGROUND} = background)")
        self.new_masks = PushButton(text="New")
        self.object_id = SpinBox(label="object", value=1, min=1, max=SCRIBBLE_BACKGROUND - 1,
                                 tooltip="object id of new clicks, boxes and paint")
        self.new_object = PushButton(text="New object")
        self.negative = CheckBox(text="negative (background) clicks", value=False,
                                 tooltip="new clicks mark background; Shift-click does this for one click")
        self.output = ComboBox(label="output", choices=self._output_choices,
                               tooltip="Labels layer that receives the result; (new layer) makes one")
        self.instant = CheckBox(text="update as I click", value=True,
                                tooltip="PML: every edit of the prompts updates the output at once")
        self.segment_button = PushButton(text="Segment all frames")
        self.backward_button = PushButton(text="◀ Propagate backward")
        self.forward_button = PushButton(text="Propagate forward ▶")
        self.cancel_button = PushButton(text="Cancel")
        self.status = Label(value="", label="")

        top = Container(widgets=[self.image, self.method, self.device], labels=True)
        prompts = Container(widgets=[
            Container(widgets=[self.points, self.new_points], layout="horizontal", labels=True),
            Container(widgets=[self.boxes, self.new_boxes], layout="horizontal", labels=True),
            Container(widgets=[self.masks, self.mask_kind, self.new_masks], layout="horizontal", labels=True),
            Container(widgets=[self.object_id, self.new_object], layout="horizontal", labels=True),
            self.negative,
        ], labels=False)
        self._prompt_box = QGroupBox("Prompts")
        box_layout = QVBoxLayout(self._prompt_box)
        box_layout.setContentsMargins(4, 4, 4, 4)
        box_layout.addWidget(prompts.native)
        run = Container(widgets=[
            self.output,
            self.instant,
            self.segment_button,
            Container(widgets=[self.backward_button, self.forward_button], layout="horizontal"),
            self.cancel_button,
        ], labels=True)
        for c in (top, prompts, run):
            c.margins = (0, 0, 0, 0)

        layout = QVBoxLayout(self)
        layout.addWidget(top.native)
        layout.addWidget(self._basic.native)
        layout.addWidget(self._advanced_box)
        layout.addWidget(self._prompt_box)
        layout.addWidget(run.native)
        layout.addWidget(self.status.native)
        layout.addStretch(1)
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self._containers = (top, prompts, run)

        # the Qt signal: magicgui does not report a change to a None choice ("(none)")
        self.image.native.currentIndexChanged.connect(self._on_image_changed)
        self.method.changed.connect(self._on_method_changed)
        self.device.changed.connect(self._on_settings_changed)
        for combo in (self.points, self.boxes, self.masks):
            combo.native.currentIndexChanged.connect(self._on_prompt_layers_changed)
        self.mask_kind.changed.connect(self._on_prompt_layers_changed)
        self.object_id.changed.connect(self._apply_object_id)
        self.negative.changed.connect(self._apply_object_id)
        self.instant.changed.connect(self._on_settings_changed)
        self.new_points.changed.connect(self._guard(self.add_points_layer))
        self.new_boxes.changed.connect(self._guard(self.add_boxes_layer))
        self.new_masks.changed.connect(self._guard(self.add_mask_layer))
        self.new_object.changed.connect(self._guard(self.next_object))
        self.segment_button.changed.connect(self._guard(self.segment_all))
        self.forward_button.changed.connect(self._guard(lambda: self.propagate(+1)))
        self.backward_button.changed.connect(self._guard(lambda: self.propagate(-1)))
        self.cancel_button.changed.connect(self._guard(self.cancel))

    @staticmethod
    def _guard(func):
        """A button handler that turns every error into a notification."""

        def handler(*_):
            try:
                func()
            except Exception as err:  # noqa: BLE001
                notify_error(err)

        return handler

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        self._connections = [(events.inserted, self._on_layer_inserted), (events.removed, self._on_layer_removed)]
        self._connections += [(layer.events.name, self.reset_choices) for layer in self.viewer.layers]
        for emitter, callback in self._connections:
            emitter.connect(callback)
        # napari deletes dock widgets without closing them: let go of the viewer's events then
        self.destroyed.connect(_disconnecter(self._connections, self._watched, self._points_press))

    def _alive(self) -> bool:
        """False once Qt has deleted the widget (napari events may still arrive)."""
        try:
            self.objectName()
        except RuntimeError:
            return False
        return True

    # -- choices -----------------------------------------------------------------------------------
    def _layers_of(self, kind: str) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, _layer_class(kind))]

    def _image_choices(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in self._layers_of("image")]

    def _method_choices(self, _widget=None) -> list:
        return [(name, name) for name in available_methods()] or [("(no method installed)", None)]

    def _layer_choices(self, kind: str) -> list:
        out = self.output.value if hasattr(self, "output") else None
        return [("(none)", None)] + [(layer.name, layer) for layer in self._layers_of(kind) if layer is not out]

    def _output_choices(self, _widget=None) -> list:
        mask = self.masks.value if hasattr(self, "masks") else None
        return [("(new layer)", None)] + [(layer.name, layer) for layer in self._layers_of("labels")
                                           if layer is not mask]

    def reset_choices(self, *_) -> None:
        """Refresh every layer list (napari calls this when layers come and go)."""
        if not self._alive() or self._refreshing:
            return
        self._refreshing = True
        try:
            for combo in (self.image, self.method, self.output, self.points, self.boxes, self.masks):
                combo.reset_choices()
        finally:
            self._refreshing = False
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[0]
        self._on_image_changed()  # the image layer may have gone
        self._on_prompt_layers_changed()  # a prompt layer may have gone

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
        self._unwatch(layer)
        if self._session_key is not None and self._session_key[0] == layer.unique_id:
            self._drop_session()
        self.reset_choices()

    # -- parameters --------------------------------------------------------------------------------
    def method_class(self):
        name = self.method.value
        return available_methods().get(name) if name else None

    def _rebuild_params(self) -> None:
        self._basic.clear()
        self._advanced.clear()
        self._param_widgets = []
        self._converters = {}
        cls = self.method_class()
        if cls is None:
            self._advanced_box.setVisible(False)
            return
        any_advanced = False
        for name, annotation, default, advanced, help_text, widget_options in _param_specs(cls):
            options = {"tooltip": help_text, **widget_options} if help_text else widget_options
            if annotation in (int, float) and name.startswith("k"):
                options["min"] = 1
            optional = _optional_of(annotation)
            if optional is not None:
                # Optional[X]: a text field, empty = None (the method's automatic choice)
                widget = LineEdit(value="" if default is None else str(default), name=name,
                                  label=name.replace("_", " "), **options)
                widget.native.setPlaceholderText("automatic")
                self._converters[name] = optional
            elif name == "head" and annotation is str:
                # a choice, not free text: every keystroke in a text field would re-open the session
                choices = list(dict.fromkeys([default, "default", "none"]))
                widget = ComboBox(value=default, choices=choices, name=name, label=name, **options)
            else:
                widget = create_widget(value=default, annotation=annotation, name=name,
                                       label=name.replace("_", " "), options=options)
            widget.changed.connect(self._on_settings_changed)
            (self._advanced if advanced else self._basic).append(widget)
            self._param_widgets.append(widget)
            any_advanced |= advanced
        self._advanced_box.setVisible(any_advanced)

    def params(self) -> dict:
        """The chosen method's parameters, by name."""
        out = {}
        for w in self._param_widgets:
            value = w.value
            convert = self._converters.get(w.name)
            if convert is not None:
                text = str(value).strip()
                try:
                    value = None if not text else convert(text)
                except ValueError:
                    raise VosEmbedError(f"parameter {w.name}: {text!r} is not a {convert.__name__} "
                                        "(leave it empty for the automatic value)") from None
            out[w.name] = value
        return out

    # -- state -------------------------------------------------------------------------------------
    def _busy(self) -> bool:
        return any(j is not None and j.running for j in (self._run_job, self._session_job))

    def _live_method(self) -> bool:
        cls = self.method_class()
        return cls is not None and cls.name in LIVE_METHODS

    def _update_state(self) -> None:
        cls = self.method_class()
        busy = self._busy()
        needs_prompts = cls is None or cls.needs_prompts
        self._prompt_box.setEnabled(needs_prompts)
        self.segment_button.enabled = cls is not None and not busy
        propagates = cls is not None and cls.propagates and not busy
        self.forward_button.enabled = propagates
        self.backward_button.enabled = propagates
        self.instant.visible = self._live_method()
        running = busy or (self._live_job is not None and self._live_job.running)
        self.cancel_button.enabled = running
        if cls is not None:
            self.method.tooltip = cls.description

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _on_image_changed(self, *_) -> None:
        if self._refreshing or not self._alive():
            return
        image = self.image.value
        if image is self._image:
            return
        self._image = image
        if self._session_key is not None and (image is None or self._session_key[0] != image.unique_id):
            self._drop_session()
        self._live_signature = None
        self._schedule_live()

    def _on_method_changed(self, *_) -> None:
        self._rebuild_params()
        self._update_state()
        self._live_signature = None
        self._schedule_live()

    def _on_settings_changed(self, *_) -> None:
        self._update_state()
        self._schedule_live()

    # -- prompt layers -----------------------------------------------------------------------------
    def _require_image(self):
        image = self.image.value
        if image is None:
            raise VosEmbedError("no image layer: open a video first (File > Open, or drag it in)")
        L.video_shape(image)
        return image

    def add_points_layer(self):
        """Make a clicks layer for the chosen image, select it in the widget, make it active."""
        layer = L.new_points_layer(self.viewer, self._require_image(), self.object_id.value)
        self.reset_choices()
        self.points.value = layer
        self._apply_object_id()
        return layer

    def add_boxes_layer(self):
        layer = L.new_boxes_layer(self.viewer, self._require_image(), self.object_id.value)
        self.reset_choices()
        self.boxes.value = layer
        self._apply_object_id()
        return layer

    def add_mask_layer(self):
        layer = L.new_mask_layer(self.viewer, self._require_image(), self.object_id.value, self.mask_kind.value)
        self.reset_choices()
        self.masks.value = layer
        self._apply_object_id()
        return layer

    def next_object(self) -> int:
        """Switch to a new object id: one more than any id in the prompts."""
        used = {self.object_id.value}
        for layer in (self.points.value, self.boxes.value):
            if layer is not None and "label" in layer.features and len(layer.features):
                used |= {int(v) for v in layer.features["label"]}
        if self.masks.value is not None:
            used |= {int(v) for v in np.unique(np.asarray(self.masks.value.data)) if v != SCRIBBLE_BACKGROUND}
        self.object_id.value = min(max(used) + 1, self.object_id.max)
        return self.object_id.value

    def _apply_object_id(self, *_) -> None:
        """New clicks / boxes / paint get the current object id (0 / background when negative)."""
        obj = int(self.object_id.value)
        points, boxes, masks = self.points.value, self.boxes.value, self.masks.value
        if points is not None and "label" in points.features:
            points.feature_defaults = {"label": 0 if self.negative.value else obj}
        if boxes is not None and "label" in boxes.features:
            boxes.feature_defaults = {"label": obj}
            with boxes.block_update_properties():
                boxes.current_edge_color = L.label_hex(obj)
        if masks is not None:
            negative = self.negative.value and self.mask_kind.value == "scribble"
            masks.selected_label = SCRIBBLE_BACKGROUND if negative else obj

    def _points_press(self, layer, event):
        """Mouse press on a clicks layer in add mode: Shift (or the toggle) makes it negative.

        napari adds the point on release with the layer's feature defaults, so setting them here
        decides the new point's object id (and colour)."""
        if layer.mode != "add" or "label" not in layer.features:
            return
        negative = self.negative.value or "Shift" in event.modifiers
        label = 0 if negative else int(self.object_id.value)
        if int(layer.feature_defaults["label"][0]) != label:
            layer.feature_defaults = {"label": label}

    def _on_prompt_layers_changed(self, *_) -> None:
        if self._refreshing or not self._alive():
            return
        wanted = {layer for layer in (self.points.value, self.boxes.value, self.masks.value) if layer is not None}
        for layer in list(self._watched):
            if layer not in wanted:
                self._unwatch(layer)
        for layer in wanted - set(self._watched):
            self._watch(layer)
        self._refreshing = True
        try:  # the output list leaves out the mask layer and the prompt lists the output
            for combo in (self.output, self.points, self.boxes, self.masks):
                combo.reset_choices()
        finally:
            self._refreshing = False
        self._apply_object_id()
        key = (self.points.value, self.boxes.value, self.masks.value, self.mask_kind.value)
        if key != self._prompt_layers:
            self._prompt_layers = key
            self._schedule_live()

    def _watch(self, layer) -> None:
        kind = next(k for k in ("points", "shapes", "labels") if isinstance(layer, _layer_class(k)))
        if kind in ("points", "shapes") and "label" not in layer.features:
            # a layer the user made: what is in it counts as object 1, new items get the current id
            features = layer.features.copy()
            features["label"] = np.ones(len(features), np.int64)
            layer.features = features
            layer.feature_defaults = {**{k: v[0] for k, v in layer.feature_defaults.items()},
                                      "label": int(self.object_id.value)}
        hooks = []
        if kind in ("points", "shapes"):
            hooks += [(layer.events.data, self._on_prompt_data), (layer.events.features, self._on_prompt_edit)]
        if kind == "labels":
            hooks += [(layer.events.paint, self._on_mask_edit), (layer.events.data, self._on_mask_edit)]
        for emitter, callback in hooks:
            emitter.connect(callback)
        if kind == "points":
            layer.mouse_drag_callbacks.insert(0, self._points_press)
        if kind in ("points", "shapes"):
            layer.bind_key(NEW_OBJECT_KEY, self._new_object_key, overwrite=True)
        self._watched[layer] = hooks

    def _new_object_key(self, layer) -> None:
        """The N key on a clicks or boxes layer: start a new object."""
        self.next_object()

    def _unwatch(self, layer) -> None:
        if layer not in self._watched:
            return
        _release(layer, self._watched.pop(layer), self._points_press)

    def _on_prompt_data(self, event) -> None:
        action = str(getattr(event, "action", "") or "")
        if action.endswith("ing") or action.lower() in ("adding", "removing", "changing"):
            return  # the edit is not finished yet (e.g. a point being dragged)
        self._on_prompt_edit()

    def _on_mask_edit(self, *_) -> None:
        # napari emits `paint` before `data_setitem` writes its pixels: read them a moment later
        self._mask_version += 1
        self._mask_timer.start()

    def _on_prompt_edit(self, *_) -> None:
        if self._writing or not self._alive():
            return
        self._schedule_live()

    def prompts(self, image=None) -> Prompts:
        """Everything in the chosen prompt layers, in the image's data coordinates."""
        image = image or self._require_image()
        parts = []
        if self.points.value is not None:
            parts.append(L.points_prompts(self.points.value, image))
        if self.boxes.value is not None:
            parts.append(L.box_prompts(self.boxes.value, image))
        if self.masks.value is not None:
            if self.masks.value is self.output.value:
                raise PromptError("the mask layer is also the output layer: choose another output")
            parts.append(L.mask_prompts(self.masks.value, image, self.mask_kind.value))
        return L.merge(*parts)

    # -- output ------------------------------------------------------------------------------------
    def output_layer(self, image, create: bool = True):
        """The chosen output Labels layer; with (new layer), a new "<image> segmentation"."""
        layer = self.output.value
        shape = L.video_shape(image)
        if layer is None:
            if not create:
                return None
            layer = L.new_output_layer(self.viewer, image)
            self.reset_choices()
            self.output.value = layer
        elif tuple(layer.data.shape) != shape:
            raise VosEmbedError(
                f"output layer {layer.name!r} has shape {tuple(layer.data.shape)}, but the image is "
                f"{shape}; choose (new layer) or a Labels layer of the image's shape"
            )
        return layer

    def _write(self, image, labels, frames=None) -> None:
        self._writing = True  # our own edits (a new layer, painting the output) are no prompt edits
        try:
            L.write_labels(self.output_layer(image), labels, frames)
        finally:
            self._writing = False

    def _write_frame(self, image, t: int, frame_labels) -> None:
        self._writing = True
        try:
            L.write_frames(self.output_layer(image), [(t, frame_labels)])
        finally:
            self._writing = False

    # -- PML sessions ------------------------------------------------------------------------------
    def _device(self):
        from ..engine.backbone import resolve_device

        return resolve_device(self.device.value)

    def _session_spec(self, image):
        """(key, head, device) of the PML session of `image`, with the PML head that goes with the
        method's `head` (`Method.pml_head`: for TVOS, the head of its matcher)."""
        params = self.params()
        head = params.get("head", "default")
        head = None if head in (None, "", "none") else head
        cls = self.method_class()
        if cls is not None:
            head = cls.pml_head(head)
        device = self._device()
        return (image.unique_id, head, str(device), EMBEDDING_SETTINGS), head, device

    def _drop_session(self) -> None:
        if self._session_job is not None:
            self._session_job.cancel()
        if self._live_job is not None:
            self._live_job.cancel()
        self._session = None
        self._session_key = None
        self._session_job = None
        self._after_session = []
        self._tuned = None
        self._method_session = None

    def with_session(self, image, then) -> None:
        """Call `then(session)` with the PML session of `image`, opening it (embedding the video,
        cached on disk) in a worker first when needed, or building there the anchor graph that
        the current parameters need and the open session lacks."""
        key, head, device = self._session_spec(image)
        params = self.params()
        options = {k: params[k] for k in SESSION_OPTIONS if k in params}
        ready = self._session if self._session is not None and self._session_key == key else None
        if ready is not None and not _needs_graph(ready, options):
            then(ready)
            return
        if self._session_job is not None and self._session_job.running and self._session_key == key:
            self._after_session = [then]  # the latest request wins
            return
        if ready is None:
            self._drop_session()
        self._session_key = key
        self._after_session = [then]
        video = L.image_video(image)

        def opened(session):
            self._session = session
            callbacks, self._after_session = self._after_session, []
            for callback in callbacks:
                callback(session)

        def done(job):
            if job.failed or job.cancelled:
                self._session_key = None if self._session is None else self._session_key
            self._update_state()

        self._set_status(f"computing the embeddings of {image.name!r} (once; cached on disk)" if ready is None
                         else f"building the anchor graph of {image.name!r} (once)")
        self._session_job = Job(
            lambda: _open_session(video, head, device, options, ready),
            f"embedding {image.name}" if ready is None else f"anchor graph of {image.name}",
            on_progress=lambda p: self._set_status(f"{p.stage} {p.done}/{p.total}"),
            on_result=opened,
            on_done=done,
        )
        self._session_job.start()
        self._update_state()

    def session_for(self, prompts: Prompts):
        """A view of the open session with exactly `prompts` as its references (its own pool;
        embeddings shared), the current k / refine parameters applied; once its head has been
        fine-tuned on the masks of `prompts` (Segment all frames), a view of the tuned session."""
        params = self.params()
        base = self._session
        if self._tuned is not None and self._tuned[0] == self._tuned_key(prompts):
            base = self._tuned[1]
        return base.with_prompts(prompts, **{k: params[k] for k in SESSION_OPTIONS if k in params})

    def _tuned_key(self, prompts: Prompts) -> tuple:
        """What a fine-tuned head depends on: the session, the number of steps and the masks."""
        return self._session_key, self.params().get("finetune_steps", 0), masks_digest(prompts.masks)

    @staticmethod
    def _walk_options(params: dict) -> dict:
        """The dock's settings `PMLSession.predict_all` takes (adaptation, the spatial check)."""
        return {k: params[k] for k in ("online_adaptation", "adapt_per_frame", "adapt_window", "stray_distance")
                if k in params}

    def _segment_view(self, view, key: tuple, options: dict):
        """Label every frame with `view` (`predict_all`), its head first fine-tuned for `key`'s steps
        on the masks unless an earlier run tuned it on the same ones (`session_for` then gave the
        tuned view); the tuned session is kept for later runs and the live updates."""
        steps = key[1]
        if steps and view.finetunable and not view.finetune_history:
            view = yield from view.finetuned(steps)
            if key[0] == self._session_key:
                self._tuned = (key, view)
        return (yield from view.predict_all(**options, finetune_steps=0))

    # -- live updates ------------------------------------------------------------------------------
    def _live_enabled(self) -> bool:
        return bool(self.instant.value) and self._live_method() and self.image.value is not None

    def _signature(self):
        parts: list = [id(self.image.value), self.method.value, self.device.value, repr(self.params()),
                       self.mask_kind.value, self._mask_version, id(self.masks.value)]
        for layer in (self.points.value, self.boxes.value):
            if layer is None:
                parts.append(None)
                continue
            data = layer.data if isinstance(layer.data, np.ndarray) else [np.asarray(d) for d in layer.data]
            blob = np.asarray(data).tobytes() if isinstance(data, np.ndarray) else b"".join(d.tobytes() for d in data)
            labels = np.asarray(layer.features["label"]).tobytes() if "label" in layer.features else b""
            parts.append((id(layer), blob, labels))
        return hash(tuple(parts))

    def _schedule_live(self) -> None:
        if self._writing or not self._live_enabled():
            return
        if sync_workers():
            self._live_update()
        else:
            self._live_timer.start()

    def _live_update(self) -> None:
        """Follow the prompts: rebuild the references, label the frame in view now and the other
        frames in a background worker."""
        if not self._live_enabled():
            return
        if self._run_job is not None and self._run_job.running:
            self._live_pending = True
            return
        try:
            image = self._require_image()
            prompts = self.prompts(image)
            signature = self._signature()
            if signature == self._live_signature and not self._live_pending:
                return
            self._live_pending = False
            if self._live_job is not None:
                self._live_job.cancel()
            if not prompts.object_ids:
                # nothing to segment (e.g. the last positive click was deleted): clear the output
                self._live_signature = signature
                if self.output.value is not None:
                    self._write(image, np.zeros(L.video_shape(image), np.uint8))
                self._set_status("click an object (a positive click), draw a box or paint a mask")
                return
            self.with_session(image, lambda session: self._live_apply(image))
        except VosEmbedError as err:
            self._set_status(str(err))
        except Exception as err:  # noqa: BLE001
            notify_error(err)

    def _live_apply(self, image) -> None:
        try:
            if self.image.value is not image or not self._live_enabled():
                return
            signature = self._signature()
            prompts = self.prompts(image)
            view = self.session_for(prompts)
            t = L.frame_in_view(self.viewer, image)
            self._write_frame(image, t, view.predict_frame(t))
        except VosEmbedError as err:
            self._set_status(str(err))
            return
        self._live_signature = signature
        self._set_status(f"frame {t} updated; the other frames follow")

        def finished(labels):
            self._write(image, labels)
            self._set_status(f"all {len(labels)} frames updated")

        options = {**self._walk_options(self.params()), "online_adaptation": False, "finetune_steps": 0}
        self._live_job = Job(lambda: view.predict_all(**options), "updating all frames",
                             on_result=finished, on_done=lambda job: self._update_state())
        self._live_job.start()
        self._update_state()

    # -- runs --------------------------------------------------------------------------------------
    def _start_run(self, make, desc, on_result) -> Job:
        def done(job):
            self._update_state()
            if job.cancelled:
                self._set_status(f"{desc}: cancelled")
            if self._live_pending:
                self._schedule_live()

        self._run_job = Job(make, desc, on_progress=lambda p: self._set_status(f"{p.stage} {p.done}/{p.total}"),
                            on_result=on_result, on_done=done)
        self._run_job.start()
        self._update_state()
        return self._run_job

    def segment_all(self) -> None:
        """Run the chosen method on every frame and write the result into the output layer."""
        cls = self.method_class()
        if cls is None:
            raise VosEmbedError("no segmentation method is installed yet")
        if self._busy():
            raise VosEmbedError("a job is running: wait for it or press Cancel")
        image = self._require_image()
        shape = L.video_shape(image)
        params = self.params()
        prompts = None
        if cls.needs_prompts:
            prompts = self.prompts(image)
            prompts.validate(*shape)
        self._device()  # a clear error now for a device that does not exist
        if self._live_job is not None:
            self._live_job.cancel()

        def write(labels):
            self._write(image, labels)
            self._set_status(f"{cls.name}: segmented {len(labels)} frames")

        if cls.shares_pml_session:
            self._run_on_session(cls, params, image, prompts, None, 0, f"{cls.name} on all frames", write)
            return
        if cls.name in LIVE_METHODS:
            def run(session):
                view = self.session_for(prompts)
                key, options = self._tuned_key(prompts), self._walk_options(params)
                self._start_run(lambda: self._segment_view(view, key, options), f"{cls.name} on all frames", write)

            self.with_session(image, run)
            return
        video = L.image_video(image)
        method_params = dict(params)
        self._start_run(lambda: iter_segment(video, prompts, method=cls.name, device=self.device.value, **method_params),
                        f"{cls.name} on all frames", write)

    def propagate(self, direction: int) -> None:
        """Run a propagating method from the frame in view forward (+1) or backward (-1)."""
        cls = self.method_class()
        if cls is None or not cls.propagates:
            raise VosEmbedError(f"method {self.method.value!r} does not propagate; use Segment all frames")
        if self._busy():
            raise VosEmbedError("a job is running: wait for it or press Cancel")
        image = self._require_image()
        n = L.video_shape(image)[0]
        prompts = self.prompts(image)
        prompts.validate(*L.video_shape(image))
        start = L.frame_in_view(self.viewer, image)
        frames = range(start, n) if direction > 0 else range(0, start + 1)
        desc = f"{cls.name} {'forward' if direction > 0 else 'backward'} from frame {start}"

        def write(labels):
            self._write(image, labels, frames)

        params = self.params()
        if cls.shares_pml_session:
            self._run_on_session(cls, params, image, prompts, start, direction, desc, write)
            return
        method = cls(device=self.device.value, **params)
        video = L.image_video(image)
        self._start_run(lambda: method.propagate(video, prompts, start=start, direction=direction), desc, write)

    def _run_on_session(self, cls, params: dict, image, prompts: Prompts, start: int | None, direction: int,
                        desc: str, on_result) -> None:
        """Run a method that shares the PML session (`Method.segment_with`: every frame, or one way
        from `start`) on the dock's sessions: the PML session of `image` (`with_session`), with the
        embeddings and anchor graph it holds, is the method's matcher (for TVOS: its global
        matcher, which seeds its clicks), and the method's own session stays for the next run with
        the same parameters (TVOS: its embeddings and fine-tuned matcher with it). `cls` is the
        method's class and `params` its parameters, as the caller read them from the dock."""
        method = cls(device=self.device.value, **params)
        video = L.image_video(image)

        def run(pml):
            key = (self._session_key, repr(params))
            kept = (self._method_session[1] if self._method_session is not None and self._method_session[0] == key
                    else None)

            def work():
                session = kept or (yield from method.open_session(video, matcher=pml))
                labels = yield from method.segment_with(session, prompts, start, direction, matcher=pml)
                return session, labels

            def finished(result):
                if key[0] == self._session_key:
                    self._method_session = (key, result[0])
                on_result(result[1])

            self._start_run(work, desc, finished)

        self.with_session(image, run)

    def cancel(self) -> None:
        """Stop every running job; what was written stays, the rest is dropped."""
        self._live_timer.stop()
        for job in (self._run_job, self._live_job, self._session_job):
            if job is not None:
                job.cancel()
        self._set_status("cancelled")
        self._update_state()

    def running(self) -> bool:
        """True while a job (embedding, segmentation, the background update) is under way."""
        jobs = (self._session_job, self._run_job, self._live_job)
        return (any(job is not None and job.running for job in jobs)
                or self._live_timer.isActive() or self._mask_timer.isActive())

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

    # -- teardown ----------------------------------------------------------------------------------
    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.cancel()
        for layer in list(self._watched):
            self._unwatch(layer)
        super().closeEvent(event)


def _open_session(video, head, device, options: dict, session=None):
    """Open the PML session of `video` unless `session` is given (a progress generator); with click
    propagation among the options, build its anchor graph too, so that the first click answers at
    once, out of the main thread."""
    from ..methods.pml import PMLSession

    if session is None:
        session = yield from PMLSession.open(video, head=head, device=device, settings=EMBEDDING_SETTINGS, **options)
    if options.get("click_propagation", 0) > 0:
        yield from session.build_anchor_graph()
    return session


def _needs_graph(session, options: dict) -> bool:
    """Whether the options ask for click propagation and `session` has no anchor graph yet."""
    return options.get("click_propagation", 0) > 0 and not session.has_anchor_graph


def _disconnecter(connections, watched, press):
    """A callback (holding no reference to the widget's Qt side) that disconnects everything."""

    def disconnect(*_):
        for emitter, callback in connections:
            emitter.disconnect(callback)
        for layer, hooks in list(watched.items()):
            _release(layer, hooks, press)
        watched.clear()

    return disconnect


def _release(layer, hooks, press) -> None:
    """Undo what `SegmentWidget._watch` did to a prompt layer."""
    for emitter, callback in hooks:
        emitter.disconnect(callback)
    if press in layer.mouse_drag_callbacks:
        layer.mouse_drag_callbacks.remove(press)
    if not isinstance(layer, _layer_class("labels")):
        layer.bind_key(NEW_OBJECT_KEY, None)
