"""The output of the dock: the Labels layer that receives the results, never a layer the user made
unless chosen, written one undo step at a time; its objects named (the layer's `features`: napari
shows the name of the object under the cursor); the Tracks layer "<image> tracks" of the
objects' centroids over time; and, for methods that track boxes, the Shapes layer
"<image> tracked boxes" of each object's box on each frame."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from magicgui.widgets import ComboBox

from ..errors import VosEmbedError
from . import layers as L
from .prompt_layers import PromptLayers, layer_class, reset_keeping


class Output:
    """The output layer choice of a dock: (new layer) makes "<image> segmentation" when first written."""

    def __init__(self, viewer, prompt_layers: PromptLayers, on_new_layer):
        self.viewer = viewer
        self._prompt_layers = prompt_layers
        self._on_new_layer = on_new_layer
        #: object id -> its name (the object list's)
        self.names: Callable[[int], str] = lambda obj: f"object {obj}"
        self.combo = ComboBox(label="output", choices=self._choices,
                              tooltip="Labels layer that receives the result; (new layer) makes one")
        self._refreshing = False
        # the prompt lists leave out the output layer, the output list the mask layer
        self.combo.native.currentIndexChanged.connect(self._output_changed)
        prompt_layers.masks.native.currentIndexChanged.connect(self._masks_changed)

    def _output_changed(self, *_) -> None:
        if not self._refreshing:
            self._prompt_layers.reset_choices()
            self._prompt_layers.changed()

    def _masks_changed(self, *_) -> None:
        self._refreshing = True
        try:
            reset_keeping(self.combo)
        finally:
            self._refreshing = False

    def _choices(self, _widget=None) -> list:
        mask = self._prompt_layers.masks.value
        return [("(new layer)", None)] + [(layer.name, layer) for layer in self.viewer.layers
                                           if isinstance(layer, layer_class("labels")) and layer is not mask]

    def layer(self, image, create: bool = True):
        """The chosen output Labels layer; with (new layer), a new "<image> segmentation"."""
        layer = self.combo.value
        shape = L.video_shape(image)
        if layer is None:
            if not create:
                return None
            layer = L.new_output_layer(self.viewer, image)
            self._on_new_layer()
            self.combo.value = layer
        elif tuple(layer.data.shape) != shape:
            raise VosEmbedError(
                f"output layer {layer.name!r} has shape {tuple(layer.data.shape)}, but the image is "
                f"{shape}; choose (new layer) or a Labels layer of the image's shape"
            )
        return layer

    def write(self, image, items) -> None:
        """Write `(t, labels)` pairs into the output layer, as one undo step."""
        self._prompt_layers.writing = True  # our own edits (a new layer, painting the output) are no prompt edits
        try:
            layer = self.layer(image)
            L.write_frames(layer, items)
            self.name_objects(layer)
        finally:
            self._prompt_layers.writing = False

    def name_objects(self, layer) -> None:
        """The names of the objects in `layer` as its features (one row per label, 0 the background)."""
        import pandas as pd

        top = int(np.max(layer.data)) if np.size(layer.data) else 0
        names = ["background"] + [self.names(i) for i in range(1, top + 1)]
        if "name" not in layer.features or list(layer.features["name"]) != names:
            layer.features = pd.DataFrame({"index": np.arange(top + 1), "name": names})

    def tracks(self, image, labels) -> None:
        """Show the objects' centroids over time as the Tracks layer "<image> tracks" (made or
        replaced; none while no object is labelled)."""
        from napari.layers import Tracks

        from ..io import object_tracks

        data = object_tracks(np.asarray(labels))
        name = f"{image.name} tracks"
        existing = next((layer for layer in self.viewer.layers if isinstance(layer, Tracks)
                         and layer.metadata.get(L.ROLE_KEY) == "tracks" and layer.name == name), None)
        if not len(data):
            if existing is not None:
                self.viewer.layers.remove(existing)
            return
        features = {"name": [self.names(int(i)) for i in data[:, 0]]}
        if existing is not None:
            existing.data = data
            existing.features = features
            return
        active = self.viewer.layers.selection.active
        self.viewer.add_tracks(data, features=features, name=name, scale=image.scale[-3:],
                               translate=image.translate[-3:], metadata={L.ROLE_KEY: "tracks"},
                               tail_length=30, blending="translucent")
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def boxes(self, image, boxes) -> None:
        """Show tracked boxes (`Session.boxes`: object -> (T, 4) y0, x0, y1, x1, NaN where absent) as
        the Shapes layer "<image> tracked boxes": one rectangle per object and frame, edged in the
        object's colour in the output. Our layer of that name is replaced (removed when no box is
        left; napari's " [1]" suffix to the name counts, a name of the user's not); a layer chosen as a
        prompt layer is the user's now and never touched."""
        import re

        from napari.layers import Shapes

        rectangles, features = L.box_rectangles(boxes)
        name = f"{image.name} tracked boxes"
        ours = re.compile(re.escape(name) + r"( \[\d+\])?")
        prompts = [layer for layer in self._prompt_layers.layers() if layer is not None]
        candidates = [layer for layer in self.viewer.layers if isinstance(layer, Shapes)
                      and layer.metadata.get(L.ROLE_KEY) == L.TRACKED_BOXES_ROLE and ours.fullmatch(layer.name)
                      and not any(layer is p for p in prompts)]
        existing = min(candidates, key=lambda layer: layer.name != name, default=None)
        if not len(rectangles):
            if existing is not None:
                self.viewer.layers.remove(existing)
            return
        output = self.combo.value
        colors = L.object_colors(features["label"], None if output is None else output.colormap)
        self._prompt_layers.writing = True  # our own layer: no prompt edit
        try:
            if existing is not None:
                L.set_tracked_boxes(existing, image, rectangles, features, colors)
            else:
                L.new_tracked_boxes_layer(self.viewer, image, rectangles, features, colors)
        finally:
            self._prompt_layers.writing = False
