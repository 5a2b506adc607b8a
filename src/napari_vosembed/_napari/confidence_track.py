"""The confidence track: how sure the method was of each frame, drawn as a strip the width of the
video (left: frame 0), with the frame in view marked; a click on the strip, or "Go to the least
certain frame", moves the viewer there, so that a user corrects where it matters."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from magicgui.widgets import Label, PushButton
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.confidence import least_certain


def floor_of(values: np.ndarray) -> float:
    """The strip's bottom: the lowest value rounded down to a tenth (at most 0.9), so that dips show."""
    return min(float(np.floor(np.nanmin(values) * 10) / 10), 0.9)


class _Strip(QWidget):
    """The drawing: confidence `floor` at the bottom, 1 at the top; frames with none are left blank."""

    def __init__(self, go_to: Callable[[int], None]):
        super().__init__()
        self.values: np.ndarray | None = None
        self.floor = 0.0
        self.current: int | None = None
        self._go_to = go_to
        self.setFixedHeight(44)
        self.setToolTip("confidence per frame: how sure the method was of each frame (top: sure); "
                        "click to go to a frame")

    def _x(self, t: float) -> float:
        n = len(self.values)
        return (t + 0.5) / n * self.width()

    def _y(self, value: float, height: float) -> float:
        return 2 + (1 - float(value)) / max(1 - self.floor, 1e-6) * height

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(38, 41, 48))
        if self.values is None or not len(self.values):
            painter.end()
            return
        h = self.height() - 4
        line = QPolygonF()
        for t, v in enumerate(self.values):
            if np.isnan(v):
                if line.size():
                    painter.setPen(QPen(QColor(120, 200, 255), 1.5))
                    painter.drawPolyline(line)
                line = QPolygonF()
                continue
            line.append(QPointF(self._x(t), self._y(v, h)))
        painter.setPen(QPen(QColor(120, 200, 255), 1.5))
        painter.drawPolyline(line)
        worst = least_certain(self.values)
        if worst is not None:
            painter.setPen(QPen(QColor(255, 120, 80), 1))
            painter.setBrush(QColor(255, 120, 80))
            painter.drawEllipse(QPointF(self._x(worst), self._y(self.values[worst], h)), 3, 3)
        if self.current is not None and 0 <= self.current < len(self.values):
            painter.setPen(QPen(QColor(255, 255, 255), 1))
            painter.drawLine(QPointF(self._x(self.current), 0), QPointF(self._x(self.current), self.height()))
        painter.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if self.values is None or not len(self.values) or event.button() != Qt.MouseButton.LeftButton:
            return
        x = event.position().x() if hasattr(event, "position") else event.x()
        self._go_to(int(np.clip(x / max(self.width(), 1) * len(self.values), 0, len(self.values) - 1)))


class ConfidenceTrack:
    """The strip, a line naming the least certain frame, and a button that goes there. `go_to(t)`
    shows frame t in the viewer."""

    def __init__(self, go_to: Callable[[int], None]):
        self._go_to = go_to
        self.strip = _Strip(go_to)
        self.label = Label(value="")
        self.button = PushButton(text="Go to the least certain frame", enabled=False)
        self.button.changed.connect(self.go_to_least_certain)
        self.native = QWidget()
        layout = QVBoxLayout(self.native)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.strip, self.label.native, self.button.native):
            layout.addWidget(widget)
        self.set_values(None)

    @property
    def values(self) -> np.ndarray | None:
        return self.strip.values

    def set_values(self, values) -> None:
        """Show a method's confidence per frame (None: nothing to show)."""
        self.strip.values = None if values is None else np.asarray(values, np.float64)
        worst = None if values is None else least_certain(self.strip.values)
        self.button.enabled = worst is not None
        if worst is None:
            self.label.value = "confidence per frame: after a run"
        else:
            self.strip.floor = floor_of(self.strip.values)
            self.label.value = (f"least certain: frame {worst} ({self.strip.values[worst]:.2f}); "
                                f"strip from {self.strip.floor:.1f} to 1")
        self.strip.update()

    def set_current(self, t: int | None) -> None:
        self.strip.current = t
        self.strip.update()

    def go_to_least_certain(self, *_) -> int | None:
        worst = None if self.values is None else least_certain(self.values)
        if worst is not None:
            self._go_to(worst)
        return worst
