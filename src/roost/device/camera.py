"""A synthetic camera: real JPEG frames of a moving test pattern, for demos and tests.

Each frame shows colour bars scrolled by the sequence number, a gradient band, and a caption
with the camera name, the capture time in UTC and the sequence number, so a viewer can tell
frames apart and see that none is missing or repeated. The camera reads no clock: the caller
passes the capture time.

Speed, measured on the development machine: about 1,500 frames/s at 320x240, quality 70
(0.66 ms per ``capture``), far above the 10 fps a device sends.
"""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime

from PIL import Image


def _bitmap_fonts_only() -> None:
    # The caption uses Pillow's built-in bitmap font only. ImageFont loads its FreeType
    # binding (FreeType, HarfBuzz: about 1.3 MB resident) when first imported; when this
    # module is the first to import it, that binding is kept out, so the camera agent does
    # not carry it (docs/BENCHMARKS.md, "Soak and footprint"). A process that imported
    # ImageFont before keeps FreeType; one that imports this module first and then asks for
    # a TrueType font gets Pillow's own "FreeType not available" error.
    if "PIL.ImageFont" in sys.modules:
        return
    sys.modules["PIL._imagingft"] = None  # type: ignore[assignment]
    try:
        import PIL.ImageFont  # noqa: F401
    finally:
        del sys.modules["PIL._imagingft"]


_bitmap_fonts_only()

from PIL import ImageDraw, ImageFont  # noqa: E402

__all__ = ["SyntheticCamera"]

# The classic SMPTE-style bar colours: white, yellow, cyan, green, magenta, red, blue, black.
_BAR_COLOURS = [
    (235, 235, 235),
    (235, 235, 16),
    (16, 235, 235),
    (16, 235, 16),
    (235, 16, 235),
    (235, 16, 16),
    (16, 16, 235),
    (16, 16, 16),
]
_SCROLL_PIXELS_PER_FRAME = 4


class SyntheticCamera:
    """Produces JPEG test frames; ``capture(seq, at_ms)`` is deterministic for its inputs."""

    mime = "image/jpeg"

    def __init__(self, name: str, width: int = 320, height: int = 240, quality: int = 70) -> None:
        if width < 16 or height < 16:
            raise ValueError("the frame must be at least 16x16 pixels")
        if not 1 <= quality <= 95:
            raise ValueError("JPEG quality must be within 1..95")
        self.name = name
        self.width = width
        self.height = height
        self.quality = quality
        # Pillow's built-in bitmap font (11 pixels), not its FreeType default: the caption
        # needs no more, and FreeType with HarfBuzz would add about a megabyte to every
        # camera (docs/BENCHMARKS.md, "Soak and footprint").
        self._font = ImageFont.load_default_imagefont()
        # The pattern is drawn once at twice the width; each frame crops a window from it,
        # which is what keeps a capture under one millisecond.
        self._bars = self._draw_bars(width, height)
        self._gradient = self._draw_gradient(width, max(8, height // 8))

    def capture(self, seq: int, at_ms: int) -> bytes:
        """Render frame ``seq`` captured at ``at_ms`` (ms since the Unix epoch, UTC) as JPEG."""
        offset = (seq * _SCROLL_PIXELS_PER_FRAME) % self.width
        image = self._bars.crop((offset, 0, offset + self.width, self.height))
        band_top = self.height - self._gradient.height - 2 * _caption_line_height(self.height)
        band_offset = (seq * _SCROLL_PIXELS_PER_FRAME * 2) % self.width
        band = self._gradient.crop(
            (band_offset, 0, band_offset + self.width, self._gradient.height)
        )
        image.paste(band, (0, max(0, band_top)))
        self._draw_caption(image, seq, at_ms)
        output = io.BytesIO()
        image.save(output, format="JPEG", quality=self.quality)
        return output.getvalue()

    def _draw_caption(self, image: Image.Image, seq: int, at_ms: int) -> None:
        moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
        lines = [
            self.name,
            moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{at_ms % 1000:03d} UTC",
            f"seq {seq}",
        ]
        line_height = _caption_line_height(self.height)
        draw = ImageDraw.Draw(image)
        box_height = line_height * len(lines) + 4
        draw.rectangle((0, 0, self.width, box_height), fill=(0, 0, 0))
        for index, line in enumerate(lines):
            draw.text((4, 2 + index * line_height), line, fill=(255, 255, 255), font=self._font)

    @staticmethod
    def _draw_bars(width: int, height: int) -> Image.Image:
        image = Image.new("RGB", (2 * width, height))
        draw = ImageDraw.Draw(image)
        bar_width = max(1, width // len(_BAR_COLOURS))
        for start in range(0, 2 * width, bar_width):
            colour = _BAR_COLOURS[(start // bar_width) % len(_BAR_COLOURS)]
            draw.rectangle((start, 0, start + bar_width - 1, height), fill=colour)
        return image

    @staticmethod
    def _draw_gradient(width: int, height: int) -> Image.Image:
        # A horizontal grey ramp, repeated twice so a scrolled window never runs off the end.
        ramp = Image.linear_gradient("L").rotate(90, expand=True).resize((width, height))
        ramp = ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = Image.new("RGB", (2 * width, height))
        coloured = Image.merge("RGB", (ramp, ramp, ramp))
        image.paste(coloured, (0, 0))
        image.paste(coloured, (width, 0))
        return image


def _caption_line_height(height: int) -> int:
    # The default font is about 11 pixels tall; small frames squeeze the lines together.
    return 12 if height >= 96 else 10
