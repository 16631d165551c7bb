"""Synthetic camera: real JPEG frames that differ from one sequence number to the next."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from roost.device.camera import SyntheticCamera

AT_MS = 1_700_000_000_123


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(("width", "height"), [(320, 240), (640, 480), (64, 48)])
def test_capture_is_a_jpeg_of_the_requested_size(width: int, height: int) -> None:
    camera = SyntheticCamera("porch", width=width, height=height)
    image = _open(camera.capture(1, AT_MS))
    assert image.format == "JPEG"
    assert image.size == (width, height)
    assert camera.mime == "image/jpeg"


def test_frames_differ_between_seqs_and_repeat_for_the_same_inputs() -> None:
    camera = SyntheticCamera("porch")
    first = camera.capture(1, AT_MS)
    assert first != camera.capture(2, AT_MS)
    assert first != camera.capture(1, AT_MS + 1_000)
    assert first == camera.capture(1, AT_MS)
    # The pixels differ too, not only metadata.
    assert _open(first).tobytes() != _open(camera.capture(2, AT_MS)).tobytes()


def test_name_changes_the_picture() -> None:
    assert SyntheticCamera("porch").capture(1, AT_MS) != SyntheticCamera("garden").capture(1, AT_MS)


def test_quality_changes_the_size() -> None:
    low = SyntheticCamera("porch", quality=10).capture(3, AT_MS)
    high = SyntheticCamera("porch", quality=95).capture(3, AT_MS)
    assert len(low) < len(high)


def test_fast_enough_for_ten_frames_per_second() -> None:
    camera = SyntheticCamera("porch")
    started = time.perf_counter()
    for seq in range(30):
        camera.capture(seq, AT_MS + seq * 100)
    elapsed = time.perf_counter() - started
    # Thirty frames must take well under the three seconds they represent at 10 fps.
    assert elapsed < 1.0


@pytest.mark.parametrize("arguments", [{"width": 8}, {"quality": 0}, {"quality": 100}])
def test_invalid_settings_are_refused(arguments: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SyntheticCamera("porch", **arguments)
