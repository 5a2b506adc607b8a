"""The prompt part of the dock: which clicks, boxes and mask layers hold the prompts, the object id
new prompts get, and the edits that should update the output.

A clicks layer (Points) holds positive clicks (the object id in its `label` feature) and negative
ones (label 0: Shift-click, or the "negative" toggle); a boxes layer (Shapes) rectangles around
objects; a mask layer (Labels) painted masks or scribbles. N on a clicks or boxes layer starts a
new object. Every finished edit calls `on_edit`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox
from qtpy.QtCore import QTimer

from ..errors import PromptError
from ..prompts import SCRIBBLE_BACKGROUND, Prompts
from . import layers as L

#: Key that starts a new object while a clicks or boxes layer is active (unused by napari there).
NEW_OBJECT_KEY = "n"


def reset_keeping(combo) -> None:
    """Refresh a layer combo box keeping its choice: magicgui drops an item whose name changed, and
    the choice with it (a renamed layer would fall out of the dock)."""
    kept = combo.value
    combo.reset_choices()
    if kept is not None and combo.value is not kept and any(c is kept for c in combo.choices):
        combo.value = kept


def set_label_default(layer, label: int) -> None:
    """New items of a clicks or boxes layer get object id `label`; the defaults of its other
    features stay (napari wants a default for every feature)."""
    layer.feature_defaults = {**{k: v.iloc[0] for k, v in layer.feature_defaults.items()}, "label": int(label)}


def layer_class(kind: str):
    import napari.layers

    return {"image": napari.layers.Image, "points": napari.layers.Points, "shapes": napari.layers.Shapes,
            "labels": napari.layers.Labels}[kind]


class PromptLayers:
    """The prompt layers of one dock (see the module docstring). `viewer`: the napari viewer;
    `output`: returns the output layer (never a prompt layer); `on_edit`: called after each edit;
    `guard(handler)`: a button handler that reports errors; `image()`: the chosen Image layer."""

    def __init__(self, viewer, output: Callable, on_edit: Callable[[], None], guard: Callable, image: Callable):
        self.viewer = viewer
        self._image = image
        self._output = output
        self._on_edit = on_edit
        self._watched: dict = {}
        self._refreshing = False
        #: bumped by every paint stroke: painting changes no layer identity, the signature sees it
        self.mask_version = 0
        self.writing = False  # set while the dock writes its own results: those are no prompt edits
        self._ignored: list[str] = []  # prompts off the image, told once

        self.points = ComboBox(label="clicks", choices=lambda w: self._choices("points"),
                               tooltip="Points layer: click = object, Shift-click = background")
        self.new_points = PushButton(text="New")
        self.boxes = ComboBox(label="boxes", choices=lambda w: self._choices("shapes"),
                              tooltip="Shapes layer with rectangles around objects")
        self.new_boxes = PushButton(text="New")
        self.masks = ComboBox(label="masks", choices=lambda w: self._choices("labels"),
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
        self.container = Container(widgets=[
            Container(widgets=[self.points, self.new_points], layout="horizontal", labels=True),
            Container(widgets=[self.boxes, self.new_boxes], layout="horizontal", labels=True),
            Container(widgets=[self.masks, self.mask_kind, self.new_masks], layout="horizontal", labels=True),
            Container(widgets=[self.object_id, self.new_object], layout="horizontal", labels=True),
            self.negative,
        ], labels=False)
        self.container.margins = (0, 0, 0, 0)

        # napari emits `paint` before `data_setitem` writes its pixels: read them a moment later
        self._mask_timer = QTimer()
        self._mask_timer.setSingleShot(True)
        self._mask_timer.setInterval(0)
        self._mask_timer.timeout.connect(self._edited)

        for combo in (self.points, self.boxes, self.masks):
            combo.native.currentIndexChanged.connect(self.changed)
        self.mask_kind.changed.connect(self.changed)
        self.object_id.changed.connect(self.apply_object_id)
        self.negative.changed.connect(self.apply_object_id)
        self.new_object.changed.connect(guard(self.next_object))
        self.new_points.changed.connect(guard(self.add_points_layer))
        self.new_boxes.changed.connect(guard(self.add_boxes_layer))
        self.new_masks.changed.connect(guard(self.add_mask_layer))

    @property
    def pending(self) -> bool:
        """True while a paint stroke waits to be read."""
        return self._mask_timer.isActive()

    # -- choices -----------------------------------------------------------------------------------
    def _choices(self, kind: str) -> list:
        out = self._output()
        return [("(none)", None)] + [(layer.name, layer) for layer in self.viewer.layers
                                     if isinstance(layer, layer_class(kind)) and layer is not out]

    def reset_choices(self) -> None:
        self._refreshing = True
        try:
            for combo in (self.points, self.boxes, self.masks):
                reset_keeping(combo)
        finally:
            self._refreshing = False

    def changed(self, *_) -> None:
        """A prompt layer was chosen (or went): watch the chosen ones, and follow them."""
        if self._refreshing:
            return
        wanted = {layer for layer in self.layers() if layer is not None}
        for layer in list(self._watched):
            if layer not in wanted:
                self.unwatch(layer)
        for layer in wanted - set(self._watched):
            self._watch(layer)
        self.apply_object_id()
        self._on_edit()

    def layers(self) -> tuple:
        return self.points.value, self.boxes.value, self.masks.value

    # -- new layers and objects --------------------------------------------------------------------
    def add_points_layer(self):
        """Make a clicks layer for the image, choose it here, make it the active layer."""
        return self._adopt(self.points, L.new_points_layer(self.viewer, self._image(), self.object_id.value))

    def add_boxes_layer(self):
        return self._adopt(self.boxes, L.new_boxes_layer(self.viewer, self._image(), self.object_id.value))

    def add_mask_layer(self):
        return self._adopt(self.masks, L.new_mask_layer(self.viewer, self._image(), self.object_id.value,
                                                        self.mask_kind.value))

    def _adopt(self, combo, layer):
        self.reset_choices()
        combo.value = layer
        self.apply_object_id()
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

    def apply_object_id(self, *_) -> None:
        """New clicks / boxes / paint get the current object id (0 / background when negative)."""
        obj = int(self.object_id.value)
        points, boxes, masks = self.layers()
        if points is not None and "label" in points.features:
            set_label_default(points, 0 if self.negative.value else obj)
        if boxes is not None and "label" in boxes.features:
            set_label_default(boxes, obj)
            with boxes.block_update_properties():
                boxes.current_edge_color = L.label_hex(obj)
        if masks is not None:
            negative = self.negative.value and self.mask_kind.value == "scribble"
            masks.selected_label = SCRIBBLE_BACKGROUND if negative else obj

    # -- watching edits ----------------------------------------------------------------------------
    def _watch(self, layer) -> None:
        kind = next(k for k in ("points", "shapes", "labels") if isinstance(layer, layer_class(k)))
        if kind in ("points", "shapes") and "label" not in layer.features:
            # a layer the user made: what is in it counts as object 1, new items get the current id
            features = layer.features.copy()
            features["label"] = np.ones(len(features), np.int64)
            layer.features = features
            layer.feature_defaults = {**{k: v[0] for k, v in layer.feature_defaults.items()},
                                      "label": int(self.object_id.value)}
        if kind == "labels":
            hooks = [(layer.events.paint, self._painted), (layer.events.data, self._painted)]
        else:
            hooks = [(layer.events.data, self._data_edited), (layer.events.features, self._edited)]
            layer.bind_key(NEW_OBJECT_KEY, lambda _layer: self.next_object(), overwrite=True)
        if kind == "points":
            layer.mouse_drag_callbacks.insert(0, self._points_press)
        for emitter, callback in hooks:
            emitter.connect(callback)
        self._watched[layer] = hooks

    def unwatch(self, layer) -> None:
        """Undo what watching did to `layer` (its events, its mouse callback, the N key)."""
        hooks = self._watched.pop(layer, None)
        if hooks is None:
            return
        for emitter, callback in hooks:
            emitter.disconnect(callback)
        if self._points_press in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._points_press)
        if not isinstance(layer, layer_class("labels")):
            layer.bind_key(NEW_OBJECT_KEY, None)

    def unwatch_all(self) -> None:
        for layer in list(self._watched):
            self.unwatch(layer)

    def _points_press(self, layer, event):
        """Mouse press on a clicks layer in add mode: Shift (or the toggle) makes it negative.

        napari adds the point on release with the layer's feature defaults, so setting them here
        decides the new point's object id (and colour)."""
        if layer.mode != "add" or "label" not in layer.features:
            return
        label = 0 if self.negative.value or "Shift" in event.modifiers else int(self.object_id.value)
        if int(layer.feature_defaults["label"][0]) != label:
            set_label_default(layer, label)

    def _data_edited(self, event) -> None:
        action = str(getattr(event, "action", "") or "")
        if action.endswith("ing") or action.lower() in ("adding", "removing", "changing"):
            return  # the edit is not finished yet (e.g. a point being dragged)
        self._edited()

    def _painted(self, *_) -> None:
        self.mask_version += 1
        self._mask_timer.start()

    def _edited(self, *_) -> None:
        if not self.writing:
            self._on_edit()

    # -- what the layers hold ----------------------------------------------------------------------
    def prompts(self, image) -> Prompts:
        """Everything in the chosen prompt layers, in the image's data coordinates; clicks and boxes
        off the image are left out (a warning says so, once)."""
        points, boxes, masks = self.layers()
        parts = []
        if points is not None:
            parts.append(L.points_prompts(points, image))
        if boxes is not None:
            parts.append(L.box_prompts(boxes, image))
        if masks is not None:
            if masks is self._output():
                raise PromptError("the mask layer is also the output layer: choose another output")
            parts.append(L.mask_prompts(masks, image, self.mask_kind.value))
        prompts = L.merge(*parts)
        ignored = prompts.drop_outside(*L.video_shape(image))
        if ignored and ignored != self._ignored:
            from napari.utils.notifications import show_warning

            show_warning(f"ignored {len(ignored)} prompt{'s' * (len(ignored) > 1)} off the image: "
                         + "; ".join(ignored[:3]) + ("; ..." if len(ignored) > 3 else ""))
        self._ignored = ignored
        return prompts

    def signature(self) -> tuple:
        """What the prompts are made of now (equal signatures: the same prompts)."""
        parts: list = [self.mask_kind.value, self.mask_version, id(self.masks.value)]
        for layer in (self.points.value, self.boxes.value):
            if layer is None:
                parts.append(None)
                continue
            data = layer.data if isinstance(layer.data, np.ndarray) else [np.asarray(d) for d in layer.data]
            blob = np.asarray(data).tobytes() if isinstance(data, np.ndarray) else b"".join(d.tobytes() for d in data)
            labels = np.asarray(layer.features["label"]).tobytes() if "label" in layer.features else b""
            parts.append((id(layer), blob, labels))
        return tuple(parts)
