"""The object list: every object the prompts name, with its name and what marks it. Choosing a row
makes new clicks, boxes and paint go to that object; a name typed there names the object in the
output (hover over it in the viewer) and its track; Delete removes one object's clicks, boxes,
paint and labels; Clear all removes every object's."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from magicgui.widgets import PushButton
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QTableWidget, QTableWidgetItem, QVBoxLayout,
                            QWidget)

from ..prompts import SCRIBBLE_BACKGROUND, Prompts
from .prompt_layers import PromptLayers


def describe(prompts: Prompts) -> dict[int, str]:
    """Each object id of `prompts` -> what marks it, e.g. '3 clicks, 1 box, paint on 2 frames'."""
    out = {}
    for obj in prompts.object_ids:
        clicks = sum(p.label == obj for p in prompts.points)
        boxes = sum(b.label == obj for b in prompts.boxes)
        painted = sum(bool((m == obj).any()) for m in (*prompts.masks.values(), *prompts.scribbles.values()))
        parts = [f"{n} {word}{'s' * (n != 1)}" for n, word in ((clicks, "click"), (boxes, "box"))] + \
            [f"paint on {painted} frame{'s' * (painted != 1)}"]
        out[obj] = ", ".join(p for p, n in zip(parts, (clicks, boxes, painted)) if n)
    return out


class ObjectList:
    """The table of objects (id, name, prompts) and its buttons. `prompt_layers`: the dock's;
    `output()`: the output Labels layer or None; `on_names()`: called when a name changes;
    `guard(handler)`: a button handler that reports errors."""

    def __init__(self, prompt_layers: PromptLayers, output: Callable, on_names: Callable[[], None],
                 guard: Callable):
        self._layers = prompt_layers
        self._output = output
        self._on_names = on_names
        self.names: dict[int, str] = {}
        self._filling = False
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["id", "name", "marked by"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setMaximumHeight(120)
        self.delete_button = PushButton(text="Delete object")
        self.clear_button = PushButton(text="Clear all")
        self.delete_button.changed.connect(guard(self.delete_chosen))
        self.clear_button.changed.connect(guard(self.clear))
        self.table.itemChanged.connect(self._renamed)
        self.table.itemSelectionChanged.connect(self._chosen)
        prompt_layers.object_id.changed.connect(self._follow)
        self.native = QWidget()
        layout = QVBoxLayout(self.native)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        buttons = QWidget()
        row = QHBoxLayout(buttons)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.delete_button.native)
        row.addWidget(self.clear_button.native)
        layout.addWidget(buttons)

    def name(self, obj: int) -> str:
        return self.names.get(obj) or f"object {obj}"

    def ids(self) -> list[int]:
        return [int(self.table.item(r, 0).text()) for r in range(self.table.rowCount())]

    def show(self, prompts: Prompts) -> None:
        """Fill the table from `prompts`, keeping the chosen object chosen."""
        marks = describe(prompts)
        if self.ids() == list(marks) and all(self.table.item(r, 2).text() == m for r, m in enumerate(marks.values())):
            return
        self._filling = True
        try:
            self.table.setRowCount(len(marks))
            for row, (obj, mark) in enumerate(marks.items()):
                for col, text in enumerate((str(obj), self.name(obj), mark)):
                    item = QTableWidgetItem(text)
                    if col != 1:
                        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                    self.table.setItem(row, col, item)
            self._select(self._layers.object_id.value)
        finally:
            self._filling = False

    def _follow(self, obj: int) -> None:
        """The object id changed in the dock (New object, N): choose its row, if it has one."""
        self._filling = True
        try:
            self._select(obj)
        finally:
            self._filling = False

    def _select(self, obj: int) -> None:
        rows = [r for r, i in enumerate(self.ids()) if i == obj]
        if rows:
            self.table.selectRow(rows[0])
        else:
            self.table.clearSelection()

    def _chosen(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows and not self._filling:
            self._layers.object_id.value = int(self.table.item(rows[0].row(), 0).text())

    def _renamed(self, item) -> None:
        if self._filling or item.column() != 1:
            return
        obj = int(self.table.item(item.row(), 0).text())
        self.names[obj] = item.text().strip()
        self._on_names()

    def chosen(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        return int(self.table.item(rows[0].row(), 0).text()) if rows else None

    def delete_chosen(self) -> None:
        from ..errors import PromptError

        obj = self.chosen()
        if obj is None:
            raise PromptError("choose the object to delete in the list first")
        self.delete(obj)

    def clear(self) -> None:
        """Delete every object of the list."""
        for obj in self.ids():
            self.delete(obj)

    def delete(self, obj: int) -> None:
        """Remove object `obj`'s clicks, boxes and paint from the prompt layers and its labels from
        the output (each an undoable edit of its layer)."""
        points, boxes, masks = self._layers.layers()
        for layer in (points, boxes):
            if layer is not None and "label" in layer.features and len(layer.features):
                rows = np.flatnonzero(np.asarray(layer.features["label"]) == obj)
                if len(rows):
                    layer.selected_data = set(rows.tolist())
                    layer.remove_selected()
        for layer in (masks, self._output()):
            if layer is not None and obj != SCRIBBLE_BACKGROUND:
                data = np.asarray(layer.data)
                index = np.nonzero(data == obj)
                if index[0].size:
                    layer.data_setitem(index, 0)
        self.names.pop(obj, None)
        self._layers.mask_version += 1
        self._layers.changed()
