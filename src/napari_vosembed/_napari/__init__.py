"""The napari side: reader, writers, sample data, the dock widget and layer helpers (the only
modules that import napari)."""


def activate(context=None) -> None:
    """npe2 calls this the first time one of the plugin's commands runs (its `on_activate`):
    make our reader napari's choice for video files unless the user chose otherwise."""
    from .reader import prefer_reader

    try:
        prefer_reader()
    except Exception:  # noqa: BLE001 - settings unavailable: napari will ask, as without us
        pass
