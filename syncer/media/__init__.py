"""Files -> Aim objects: images (raster and SVG), texts, tables, audio clips, plotly figures.
Every file is read through `sources.local_artifacts.read_regular` (never a FIFO, a device or
more than the size limit). The decisions of what a file is and where it lands are pure and
live in `mapping.media_names`."""

from .convert import NotShown, aim_object, aim_objects

__all__ = ["NotShown", "aim_object", "aim_objects"]
