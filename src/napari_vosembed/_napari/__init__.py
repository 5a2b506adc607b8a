"""The napari side: reader, sample data, widgets and layer hooks (the only napari imports)."""
