"""The dock's own progress: a bar for the running job's stage, and a line saying what happens,
how long it will take and how long it took."""

from __future__ import annotations

from magicgui.widgets import Label
from qtpy.QtWidgets import QProgressBar, QSizePolicy, QVBoxLayout, QWidget

from ..progress import Progress


def duration(seconds: float) -> str:
    """'0.8 s', '14 s', '2 min 05 s'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


class ProgressPanel:
    """`step(desc, progress, eta_s)` while a job runs, `message(text)` for everything else,
    `idle()` hides the bar."""

    def __init__(self):
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.status = Label(value="", label="")
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self.native = QWidget()
        layout = QVBoxLayout(self.native)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar)
        layout.addWidget(self.status.native)

    def step(self, desc: str, step: Progress, eta_s: float | None) -> None:
        self.bar.setVisible(True)
        self.bar.setRange(0, max(step.total, 1))
        self.bar.setValue(min(step.done, step.total))
        self.bar.setFormat(f"{step.stage} %v/%m")
        left = f", about {duration(eta_s)} left" if eta_s is not None else ""
        self.message(f"{desc}: {step.stage} {step.done}/{step.total}{left}")

    def message(self, text: str) -> None:
        self.status.value = text

    def idle(self) -> None:
        self.bar.setVisible(False)
