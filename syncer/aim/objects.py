"""Aim objects the public `aim.Image` cannot make: an image holding SVG bytes (Aim's UI shows an
image as `data:image/<format>;base64,...`, and `svg+xml` is a format browsers render). Fills
the object's storage the way `aim.Image` does for raster images (keys checked in compat.py)."""

from __future__ import annotations

import re
from typing import Any

_LENGTH = re.compile(r"^\s*([0-9.]+)\s*(px|pt|in|cm|mm)?\s*$")
_PX = {"px": 1.0, "pt": 4 / 3, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4}


def svg_image(data: bytes, caption: str) -> Any:
    """An aim.Image holding the SVG itself (format `svg+xml`), sized from its root element: made as
    a 1x1 image, then given the SVG's bytes, format and size (what `aim.Image.json` reports)."""
    import xml.etree.ElementTree as ET

    from aim.sdk.objects.image import Image
    from PIL import Image as PILImage

    root = ET.fromstring(data)  # expat refuses entity expansion bombs; the size is bounded
    if not root.tag.endswith("svg"):
        raise ValueError("not an SVG document")
    width, height = _size(root.get("width"), root.get("height"), root.get("viewBox"))
    img: Any = Image(PILImage.new("RGBA", (1, 1)), caption=caption)
    blob = type(img.storage["data"])  # the blob type Aim stores image bytes in
    img.storage["data"] = blob(data=data)
    img.storage["format"] = "svg+xml"
    img.storage["source"] = "svg"
    img.storage["width"], img.storage["height"] = width, height
    return img


def _size(width: str | None, height: str | None, view_box: str | None) -> tuple[int, int]:
    w, h = _px(width), _px(height)
    if (w is None or h is None) and view_box:
        parts = view_box.replace(",", " ").split()
        if len(parts) == 4:
            w, h = w or float(parts[2]), h or float(parts[3])
    return max(1, round(w or 640)), max(1, round(h or 480))


def _px(length: str | None) -> float | None:
    m = _LENGTH.match(length or "")
    return float(m.group(1)) * _PX[m.group(2) or "px"] if m else None
