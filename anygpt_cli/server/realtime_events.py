"""What a `/v1/realtime` client sends: its events' fields checked, the session's settings.

Each check raises `EventError`, which the session sends back as an `error` event (the connection
stays open).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anygpt_cli.server.audio_out import PCM_RATE
from anygpt_cli.server.errors import APIError

if TYPE_CHECKING:
    import torch

    from anygpt_cli.server.service import Service

__all__ = ["EventError", "Settings", "UserItem", "object_of", "pcm16_of", "updated"]

#: File headers of formats that are not raw PCM16: refused by name.
_CONTAINERS = {b"RIFF": "a wav file", b"OggS": "an ogg file", b"fLaC": "a flac file", b"ID3": "mp3"}


class EventError(Exception):
    """A client event the session cannot take: sent back as an `error` event."""

    def __init__(
        self, message: str, *, code: str = "invalid_value", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


@dataclass
class Settings:
    """What `session.update` sets."""

    voice: str = "alloy"
    output: str = "audio"  # or "text"
    instructions: str | None = None
    max_output_tokens: int | None = None


@dataclass
class UserItem:
    """A user message not answered yet: its text and its audio (float32 at 24 kHz)."""

    id: str
    text: str = ""
    audio: list[torch.Tensor] = field(default_factory=list)


def object_of(value: Any, what: str) -> dict[str, Any]:  # noqa: ANN401 - JSON
    """`value` if it is a JSON object, else `EventError` naming `what`."""
    if not isinstance(value, dict):
        raise EventError(f"{what}: expected an object", param=what)
    return value


def pcm16_of(value: Any, what: str) -> bytes:  # noqa: ANN401 - JSON
    """The bytes of base64 PCM16; refused: not base64, empty, an odd length, a file header."""
    if not isinstance(value, str):
        raise EventError(f"{what}: base64 PCM16 audio (a string)", param=what)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EventError(f"{what}: not valid base64", param=what) from None
    if not data:
        raise EventError(f"{what}: empty", param=what)
    for head, name in _CONTAINERS.items():
        if data.startswith(head):
            raise EventError(
                f"{what}: {name}, not raw PCM16; send 16-bit little-endian mono samples at "
                f"{PCM_RATE} Hz",
                code="invalid_audio",
                param=what,
            )
    if len(data) % 2:
        raise EventError(
            f"{what}: {len(data)} bytes is not whole 16-bit samples (PCM16)",
            code="invalid_audio",
            param=what,
        )
    return data


def updated(settings: Settings, given: dict[str, Any], service: Service) -> Settings:
    """`settings` with the fields of a `session.update` (or `response.create`) applied."""
    if given.get("type", "realtime") != "realtime":
        raise EventError("session.type: only realtime sessions", param="session.type")
    changes: dict[str, Any] = {}
    if "instructions" in given:
        if not isinstance(given["instructions"], str | None):
            raise EventError("instructions: a string", param="session.instructions")
        changes["instructions"] = given["instructions"] or None
    if "output_modalities" in given:
        changes["output"] = _modality(given["output_modalities"])
    if given.get("turn_detection") or _at(given, "audio", "input", "turn_detection"):
        raise EventError(
            "turn_detection: this server is turn-based; commit the buffer and send "
            "response.create (set turn_detection to null)",
            param="session.audio.input.turn_detection",
        )
    for side in ("input", "output"):
        fmt = _at(given, "audio", side, "format")
        if fmt is not None and (
            not isinstance(fmt, dict)
            or fmt.get("type") != "audio/pcm"
            or fmt.get("rate", PCM_RATE) != PCM_RATE
        ):
            raise EventError(
                f"audio.{side}.format: only audio/pcm at {PCM_RATE} Hz",
                param=f"session.audio.{side}.format",
            )
    voice = _at(given, "audio", "output", "voice")
    if voice is not None:
        if not isinstance(voice, str):
            raise EventError("audio.output.voice: a voice name", param="session.audio.output.voice")
        try:
            service.voice(voice, "audio.output.voice")
        except APIError as err:
            raise EventError(err.message, param="session.audio.output.voice") from None
        changes["voice"] = voice
    if "max_output_tokens" in given:
        changes["max_output_tokens"] = _budget(given["max_output_tokens"])
    return dataclasses.replace(settings, **changes)


def _modality(value: Any) -> str:  # noqa: ANN401 - JSON
    if value not in (["audio"], ["text"]):
        raise EventError(
            "output_modalities: ['audio'] (speech, with its transcript) or ['text']",
            param="session.output_modalities",
        )
    return str(value[0])


def _budget(value: Any) -> int | None:  # noqa: ANN401 - JSON
    if value == "inf" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise EventError(
            "max_output_tokens: an integer from 1 to 4096, or 'inf'",
            param="session.max_output_tokens",
        )
    return value


def _at(given: dict[str, Any], *path: str) -> Any:  # noqa: ANN401 - JSON
    value: Any = given
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
