"""Chat input lines: the seed's `interleaved|…` format and plain text, parsed into a `ChatLine`.

The seed README and the reference code disagree on fields 3 and 4 (image paths vs voice prompt,
REFERENCE.md §7): both orders are accepted, each file told apart by its content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from anygpt_core.errors import InputError
from anygpt_core.files import check_input_file
from anygpt_core.tasks import require_utf8

__all__ = ["ChatLine", "classify_file", "parse_line"]

_LINE_FIELDS = ("task", "text", "modality", "image", "voice prompt", "speech", "music")
_TASK_WORD = re.compile(r"^[A-Za-z][\w-]*$")
_MODALITY = re.compile(r"^[a-z][a-z0-9_]*$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def classify_file(path: Path) -> Literal["image", "audio"]:
    """Tell an image from an audio file by its content: PIL opens it => image; soundfile reads it => audio.

    Without PIL installed, a file soundfile cannot read counts as an image if its suffix is an
    image suffix.

    Raises:
        InputError: the file is missing or is neither.
    """
    import soundfile as sf

    path = check_input_file(path)
    try:
        from PIL import Image
    except ImportError:
        image_module = None
    else:
        image_module = Image
    if image_module is not None:
        try:
            with image_module.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError):
            pass
        else:
            return "image"
    try:
        sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        pass
    else:
        return "audio"
    if image_module is None and path.suffix.lower() in _IMAGE_SUFFIXES:
        return "image"
    raise InputError(f"{path}: neither an image nor an audio file")


@dataclass(frozen=True)
class ChatLine:
    """One parsed input line.

    Attributes:
        command: `send` a message, `clear` the history or `exit`.
        text: the typed instruction.
        to: the answer modality, or None to keep the session's choice.
        inputs: attached files per modality.
        voice_prompt: a voice for spoken answers.
    """

    command: Literal["send", "clear", "exit"]
    text: str = ""
    to: str | None = None
    inputs: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)
    voice_prompt: Path | None = None


def _paths(value: str) -> list[Path]:
    return [Path(p.strip()).expanduser() for p in value.split(",") if p.strip()]


def parse_line(line: str) -> ChatLine:
    """Parse a chat line: plain text, `|clear`, `quit`, or the seed's interleaved format.

    The format is `interleaved|TEXT|MODALITY|IMAGE|VOICE_PROMPT|SPEECH|MUSIC` as the seed's README
    documents it; its code reads VOICE_PROMPT before IMAGE (REFERENCE.md §7), so fields 3 and 4 are
    sorted by content (`classify_file`). Path fields take comma-separated lists; empty fields are
    none; MODALITY defaults to text.

    Raises:
        InputError: a malformed line, a missing file, or two voice prompts.
    """
    stripped = require_utf8(line.strip())
    fields = [f.strip() for f in stripped.split("|")]
    if stripped.lower() in {"quit", "exit"}:
        return ChatLine("exit")
    if len(fields) > 1 and fields[0] == "" and fields[1].lower() == "clear" and len(fields) == 2:
        return ChatLine("clear")
    is_interleaved = fields[0].lower() == "interleaved" and len(fields) > 1
    if not is_interleaved and (len(fields) < 3 or not _TASK_WORD.match(fields[0])):
        return ChatLine("send", text=stripped)
    if not is_interleaved:
        raise InputError(
            f"cannot parse {stripped[:60]!r}: task {fields[0]!r} is not a chat task; chat lines are "
            "plain text or interleaved|TEXT|MODALITY|IMAGE|VOICE_PROMPT|SPEECH|MUSIC"
        )
    if len(fields) > len(_LINE_FIELDS):
        raise InputError(
            f"cannot parse {stripped[:60]!r}: {len(fields)} fields, at most {len(_LINE_FIELDS)} "
            "(interleaved|TEXT|MODALITY|IMAGE|VOICE_PROMPT|SPEECH|MUSIC)"
        )
    fields += [""] * (len(_LINE_FIELDS) - len(fields))
    _, text, to, first, second, speech, music = fields
    if text.lower() == "clear" and not any(fields[2:]):
        return ChatLine("clear")
    to = to.lower() or "text"
    if not _MODALITY.match(to):
        raise InputError(f"cannot parse {stripped[:60]!r}: {to!r} is not a modality name")
    images: list[Path] = []
    voices: list[Path] = []
    for path in _paths(first) + _paths(second):
        (images if classify_file(path) == "image" else voices).append(path)
    if len(voices) > 1:
        raise InputError(
            f"cannot parse {stripped[:60]!r}: {len(voices)} voice prompts "
            f"({', '.join(str(v) for v in voices)}); give one"
        )
    inputs = {
        "image": tuple(images),
        "speech": tuple(_paths(speech)),
        "music": tuple(_paths(music)),
    }
    return ChatLine(
        "send",
        text=text,
        to=to,
        inputs={name: paths for name, paths in inputs.items() if paths},
        voice_prompt=voices[0] if voices else None,
    )
