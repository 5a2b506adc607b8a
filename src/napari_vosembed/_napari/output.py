"""The output of the dock: the Labels layer that receives the results, never a layer the user made
unless chosen, written one undo step at a time."""

from __future__ import annotations

from magicgui.widgets import ComboBox

from ..errors import VosEmbedError
from . import layers as L
from .prompt_layers import PromptLayers, layer_class


class Output:
    """The output layer choice of a dock: (new layer) makes "<image> segmentation" when first written."""

    def __init__(self, viewer, prompt_layers: PromptLayers, on_new_layer):
        self.viewer = viewer
        self._prompt_layers = prompt_layers
        self._on_new_layer = on_new_layer
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
            self.combo.reset_choices()
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
            L.write_frames(self.layer(image), items)
        finally:
            self._prompt_layers.writing = False
