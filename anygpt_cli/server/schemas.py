"""Request bodies, in OpenAI's shapes, with AnyGPT's documented extensions.

Unknown fields are ignored (clients send many), except those that would change the answer and that
this server cannot honour: those are refused by name (see `UNSUPPORTED`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from anygpt_core.config import MAX_SEED

__all__ = [
    "UNSUPPORTED",
    "ChatRequest",
    "ImageRequest",
    "Message",
    "MusicRequest",
    "SpeechRequest",
]

#: Seeds: the range the core takes (`anygpt_core.config.check_seed`), so each maps to its own state.
SEED_MAX = MAX_SEED

#: Chat fields that would change the answer and that this server does not implement.
UNSUPPORTED = (
    "tools",
    "functions",
    "tool_choice",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "stop",
    "prediction",
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    """`{"type": "text", "text": ...}`."""

    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    """An image as a data URL (`data:image/png;base64,...`); other URLs are refused."""

    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    """`{"type": "image_url", "image_url": {"url": "data:..."}}`."""

    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(BaseModel):
    """Base64 audio with its format (`wav`, `flac`, `mp3`, `ogg`)."""

    data: str
    format: str = "wav"


class AudioPart(BaseModel):
    """`{"type": "input_audio", "input_audio": {"data", "format"}}`: a spoken instruction."""

    type: Literal["input_audio"]
    input_audio: InputAudio


class InputMedia(BaseModel):
    """Extension: any installed modality's file, base64, e.g. music (`{"modality": "music"}`)."""

    modality: str
    data: str
    format: str | None = None


class MediaPart(BaseModel):
    """Extension: `{"type": "input_media", "input_media": {"modality", "data", "format"}}`."""

    type: Literal["input_media"]
    input_media: InputMedia


Part = Annotated[TextPart | ImagePart | AudioPart | MediaPart, Field(discriminator="type")]


class Message(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class AudioOutput(BaseModel):
    """`audio` of a chat request: the voice and the file format of a spoken answer."""

    voice: str = "alloy"
    format: str = "mp3"


class StreamOptions(BaseModel):
    """`stream_options`: `include_usage` adds a last chunk with token counts."""

    include_usage: bool = False


class ChatRequest(_Body):
    """`POST /v1/chat/completions`."""

    model: str
    messages: list[Message] = Field(min_length=1)
    modalities: list[str] | None = None
    audio: AudioOutput | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> ChatRequest:
        extra = self.model_extra or {}
        for name in UNSUPPORTED:
            if extra.get(name) not in (None, [], {}, False):
                raise ValueError(f"{name} is not supported by this server")
        return self


class SpeechRequest(_Body):
    """`POST /v1/audio/speech`."""

    model: str
    input: str = Field(min_length=1, max_length=4096)
    voice: str = "alloy"
    response_format: str = "mp3"  # OpenAI's default
    speed: float = Field(1.0, ge=0.25, le=4.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    #: `sse` (speech.audio.delta events) or `audio` (the bytes, chunked); absent: the whole file.
    stream_format: Literal["sse", "audio"] | None = None


class ImageRequest(_Body):
    """`POST /v1/images/generations`."""

    model: str | None = None
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=10)
    response_format: str = "b64_json"
    size: str | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)


class MusicRequest(_Body):
    """`POST /v1/audio/generations` (AnyGPT's extension): text to music."""

    model: str
    prompt: str = Field(min_length=1, max_length=4000)
    response_format: str = "wav"
    seed: int | None = Field(None, ge=0, le=SEED_MAX)


def dump(value: Any) -> Any:  # noqa: ANN401 - JSON-ready values
    """A pydantic model (or anything) as plain JSON values."""
    return value.model_dump() if isinstance(value, BaseModel) else value
