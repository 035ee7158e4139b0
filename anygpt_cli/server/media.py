"""Media that arrive in a request (data URLs, base64, uploads): checked, then kept in the cache.

Nothing in a request names a server path: media come as bytes. They are written to the server's
own cache directory (the codecs read files), checked against the server's limits, encoded and
removed. A URL is never fetched.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from anygpt_cli.server.errors import APIError

__all__ = ["IMAGE_SIZES", "Limits", "MediaStore", "decode_base64", "parse_data_url", "png_at"]

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I
)

#: File suffixes of the media types clients put in data URLs.
SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/ogg": ".ogg",
}
#: Audio formats the server reads (`input_audio.format`, upload suffixes).
AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg")
#: The sizes OpenAI's image endpoint takes (`size`; "auto" too); clients send one by default.
IMAGE_SIZES = (
    "256x256",
    "512x512",
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "1792x1024",
    "1024x1792",
)


@dataclass(frozen=True)
class Limits:
    """What one request may carry.

    Attributes:
        max_body_bytes: the request body (413 beyond).
        max_audio_seconds: each audio input (400 beyond).
        max_image_pixels: each image input, width × height (400 beyond).
        read_timeout: seconds to send a request's head (the connection is closed beyond), and
            then its body (408 beyond).
    """

    max_body_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 60.0
    max_image_pixels: int = 16_777_216
    read_timeout: float = 30.0


def decode_base64(data: str, what: str) -> bytes:
    """Bytes of a base64 string (standard alphabet, padding optional); 400 naming `what` if not."""
    text = re.sub(r"\s+", "", data)
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{what}: not valid base64", param=what) from None
    if not raw:
        raise APIError(400, f"{what}: empty", param=what)
    return raw


def parse_data_url(url: str, what: str) -> tuple[bytes, str | None]:
    """The bytes and media type of a `data:` URL; any other URL is refused (never fetched)."""
    match = _DATA_URL.match(url)
    if match is None:
        scheme = url.split(":", 1)[0][:16] if ":" in url else "a path"
        raise APIError(
            400,
            f"{what}: this server does not fetch URLs ({scheme}); send the file inline as a "
            "data URL, e.g. data:image/png;base64,...",
            param=what,
            code="url_not_supported",
        )
    if not match.group("b64"):
        raise APIError(400, f"{what}: a data URL must be base64 (;base64,)", param=what)
    mime = (match.group("mime") or "").lower() or None
    return decode_base64(url[match.end() :], what), mime


class MediaStore:
    """The server's cache directory: request media live here while they are encoded.

    Args:
        root: the cache directory (created); each server process uses its own folder inside,
            removed when the server stops.
        limits: the request limits checked on each file.
    """

    def __init__(self, root: Path, limits: Limits) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        _remove_stale(root)
        self.dir = Path(tempfile.mkdtemp(prefix=f"serve-{os.getpid()}-", dir=root))
        self.limits = limits

    @contextlib.contextmanager
    def file(self, data: bytes, suffix: str, *, kind: str, what: str) -> Iterator[Path]:
        """A private file holding `data` for the block, checked as `kind` (audio, image or other)."""
        fd, name = tempfile.mkstemp(suffix=suffix, dir=self.dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            if kind == "audio":
                self._check_audio(path, what)
            elif kind == "image":
                self._check_image(path, what)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _check_audio(self, path: Path, what: str) -> None:
        import soundfile

        try:
            info = soundfile.info(str(path))
        except (RuntimeError, soundfile.LibsndfileError, OSError):
            raise APIError(400, f"{what}: not a readable audio file", param=what) from None
        if info.frames <= 0 or info.samplerate <= 0:
            raise APIError(400, f"{what}: the audio is empty", param=what)
        seconds = info.frames / info.samplerate
        if seconds > self.limits.max_audio_seconds:
            raise APIError(
                400,
                f"{what}: {seconds:.1f} s of audio is over this server's limit of "
                f"{self.limits.max_audio_seconds:g} s",
                param=what,
                code="audio_too_long",
            )

    def _check_image(self, path: Path, what: str) -> None:
        try:
            from PIL import Image
        except ImportError:  # no image codec installed: the modality check answers
            return
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError, Image.DecompressionBombError):
            raise APIError(400, f"{what}: not a readable image", param=what) from None
        if width * height > self.limits.max_image_pixels:
            raise APIError(
                400,
                f"{what}: {width}x{height} pixels is over this server's limit of "
                f"{self.limits.max_image_pixels:,}",
                param=what,
                code="image_too_large",
            )

    def close(self) -> None:
        """Remove this server's folder and whatever is still in it."""
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def _remove_stale(root: Path) -> None:
    """Remove the folders of servers that died without cleaning up (their process is gone)."""
    import shutil

    for folder in root.glob("serve-*-*"):
        pid = folder.name.split("-")[1]
        if not pid.isdigit() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # alive, another user's


def suffix_for(mime: str | None, default: str) -> str:
    """A file suffix for a media type (the modality's default when unknown)."""
    return SUFFIXES.get(mime or "", default)


def png_at(png: bytes, size: str | None) -> tuple[bytes, str]:
    """`png` at `size` ("WxH"), and the size the decoder drew it at ("WxH").

    The drawing is scaled to cover `size` and centre-cropped to it (no distortion); None or
    "auto" leaves it as drawn.
    """
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(png)) as image:
        drawn = f"{image.width}x{image.height}"
        if size in (None, "auto", drawn):
            return png, drawn
        width, height = (int(n) for n in size.split("x"))
        scaled = ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    scaled.save(out, format="PNG")
    return out.getvalue(), drawn
