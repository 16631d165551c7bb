"""What a ``[camera] source`` names, and that a camera's password never reaches the status."""

from __future__ import annotations

import pytest

from roost.device.sources import SourceKind, parse_source, redact


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("test-pattern", SourceKind.TEST_PATTERN),
        ("rtsp://192.0.2.9:554/stream1", SourceKind.RTSP),
        ("RTSPS://192.0.2.9/s", SourceKind.RTSP),
        ("http://192.0.2.9/mjpg/video.mjpg", SourceKind.HTTP),
        ("https://cam.example/video", SourceKind.HTTP),
        ("/dev/video0", SourceKind.V4L2),
        ("/srv/clips/porch.mp4", SourceKind.FILE),
        ("clips/porch.mp4", SourceKind.FILE),
    ],
)
def test_each_kind_of_source_is_recognised(text: str, kind: SourceKind) -> None:
    spec = parse_source(text)
    assert (spec.kind, spec.target) == (kind, text)
    assert spec.is_live is (kind is not SourceKind.FILE)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:hunter2@192.0.2.9:554/s", "rtsp://admin:***@192.0.2.9:554/s"),
        ("http://u:p@192.0.2.9/v?x=1", "http://u:***@192.0.2.9/v?x=1"),
        ("http://192.0.2.9/v", "http://192.0.2.9/v"),
        ("rtsp://onlyuser@192.0.2.9/s", "rtsp://onlyuser@192.0.2.9/s"),
    ],
)
def test_a_urls_password_is_redacted(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert parse_source(url).display == shown
