"""The parameters form of the dock, built from a method's `Params` dataclass.

Each field becomes a widget: its type gives the kind (check box, spin box, text), its metadata the
rest: "help" (tooltip), "advanced" (folded away; by default every field after the second),
"choices" (a combo box), "widget" (options such as min, max, step). `Optional[X]` fields are text
fields where empty means None (the method's automatic choice).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable

from magicgui.widgets import ComboBox, Container, LineEdit, create_widget
from superqt import QCollapsible

from ..errors import VosEmbedError


def param_specs(cls):
    """(name, type, default, metadata) of each field of `cls.Params`."""
    module = sys.modules.get(cls.__module__)
    try:
        hints = typing.get_type_hints(cls.Params, globalns=vars(module) if module else None)
    except Exception:  # noqa: BLE001 - unresolvable annotation: fall back to the default's type
        hints = {}
    for f in dataclasses.fields(cls.Params):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        yield f.name, hints.get(f.name, type(default) if default is not None else str), default, f.metadata


def optional_of(annotation):
    """X for an `Optional[X]` / `X | None` annotation of a simple type, else None."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and args[0] in (int, float, str):
        return args[0]
    return None


class ParamsForm:
    """The basic and the advanced (folded) parameters of one method; `on_change` is called on edits."""

    def __init__(self, on_change: Callable[[], None]):
        self._on_change = on_change
        self.basic = Container(labels=True)
        self.advanced = Container(labels=True)
        self.advanced_box = QCollapsible("Advanced parameters")
        self.advanced_box.addWidget(self.advanced.native)
        self.widgets: list = []
        self._converters: dict = {}

    def build(self, cls) -> None:
        """Widgets for the parameters of method class `cls` (None: none)."""
        self.basic.clear()
        self.advanced.clear()
        self.widgets, self._converters = [], {}
        any_advanced = False
        for i, (name, annotation, default, meta) in enumerate(param_specs(cls) if cls is not None else ()):
            options = dict(meta.get("widget", {}))
            if meta.get("help"):
                options["tooltip"] = meta["help"]
            label = name.replace("_", " ")
            optional = optional_of(annotation)
            if "choices" in meta:
                # a choice, not free text: every keystroke in a text field would re-open the session
                widget = ComboBox(value=default, choices=list(meta["choices"]), name=name, label=label, **options)
            elif optional is not None:
                widget = LineEdit(value="" if default is None else str(default), name=name, label=label, **options)
                widget.native.setPlaceholderText("automatic")
                self._converters[name] = optional
            else:
                widget = create_widget(value=default, annotation=annotation, name=name, label=label, options=options)
            widget.changed.connect(lambda *_: self._on_change())
            advanced = bool(meta.get("advanced", i >= 2))
            (self.advanced if advanced else self.basic).append(widget)
            self.widgets.append(widget)
            any_advanced |= advanced
        self.advanced_box.setVisible(any_advanced)

    def values(self) -> dict:
        """The parameters by name; a clear error for text that is not a number."""
        out = {}
        for w in self.widgets:
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
