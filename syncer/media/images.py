"""Image files -> `aim.Image`: raster formats through PIL (browsers' formats kept, others as
PNG), SVG kept as vector (`syncer.aim.objects.svg_image`: it fills an aim.Image's storage)."""

from __future__ import annotations

import io
from typing import Any

from ..aim.objects import svg_image

__all__ = ["BROWSER_FORMATS", "raster_image", "svg_image"]

BROWSER_FORMATS = {"png", "jpeg", "gif", "webp"}


def raster_image(data: bytes, caption: str) -> Any:
    from aim.sdk.objects.image import Image
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:
        im.load()
        fmt = (im.format or "png").lower()
        return Image(im.copy(), caption=caption, format=fmt if fmt in BROWSER_FORMATS else "png")
