"""What a chat turn is made of: the history's turns, a turn's events, its reply, the user's message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.config import DecodingConfig
from anygpt_core.engine.events import (
    Done,
    SpanClosed,
    SpanOpened,
    TokenEvent,
    spans_json,
)
from anygpt_core.prompts import ANYGPT_CHAT, MMGPT_CHAT, ChatTemplate

if TYPE_CHECKING:
    import torch

    from anygpt_core.api import Media
    from anygpt_core.spec import ModalitySpec


#: Text answers in chat: the text default (top-k 50 sampling, one beam, streamed) with the seed
#: chat's budget of 500 new tokens (its generate_config.json). Its 5 sampled beams are opt-in
#: (`num_beams=5`): beams cannot stream, and they answer in text only, while a one-beam answer may
#: open a modality span of its own.
CHAT_TEXT_DECODING = DecodingConfig(
    do_sample=True, temperature=1.0, top_p=1.0, top_k=50, max_new_tokens=500, min_new_tokens=0
)

#: Chat templates by `--chat-template` name.
TEMPLATES: dict[str, ChatTemplate] = {"mmgpt": MMGPT_CHAT, "anygpt": ANYGPT_CHAT}
#: The `ModalitySpec.condition` that a chat's voice prompt conditions.
VOICE = "voice"
_INS, _RES = "<-Ins->", "<-Res->"

Source = str | Path | Any
Sources = Source | Sequence[Source] | None


@dataclass(frozen=True)
class Turn:
    """One exchange in the history: the user's message and the model's answer, as the prompt holds them."""

    user: str
    assistant: str


@dataclass
class Reply:
    """What one turn produced.

    Attributes:
        text: the answer's text, spans left out.
        message: the answer as stored in the history (text and spans as protocol strings).
        files: media written for the answer's spans, in order.
        spans: the spans the model wrote.
        prompt: the exact prompt the model continued.
        to: the answer modality asked for.
        finish_reason: `stop` (end of turn), `length` (max_new_tokens spent; the turn is closed).
        dropped: how many of the oldest turns were cut so the prompt fits the context.
        cached_tokens: prompt tokens the local engine's prefix cache supplied (the history it
            had run); None where the engine does not say.
    """

    text: str
    message: str
    prompt: str
    to: str
    files: list[Path] = field(default_factory=list)
    spans: list[SpanClosed] = field(default_factory=list)
    finish_reason: str = "stop"
    new_tokens: int = 0
    cached_tokens: int | None = None
    seconds: float = 0.0
    seed: int | None = None
    dropped: int = 0

    @property
    def transcript(self) -> str | None:
        """The model's transcription of a spoken instruction (after `<-Ins->`), if it wrote one."""
        if _INS not in self.text:
            return None
        return self.text.split(_INS, 1)[1].split(_RES, 1)[0].strip()

    @property
    def answer(self) -> str:
        """The answer's text after `<-Res->` when the model used that convention, else the text."""
        return self.text.split(_RES, 1)[1].strip() if _RES in self.text else self.text

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what `anygpt chat --json` prints per turn)."""
        return {
            "to": self.to,
            "text": self.text,
            "message": self.message,
            "transcript": self.transcript,
            "files": [str(f) for f in self.files],
            "spans": spans_json(self.spans),
            "prompt": self.prompt,
            "new_tokens": self.new_tokens,
            "cached_tokens": self.cached_tokens,
            "finish_reason": self.finish_reason,
            "dropped_turns": self.dropped,
            "seconds": round(self.seconds, 3),
            "seed": self.seed,
        }


@dataclass(frozen=True)
class TextPiece:
    """New text of the answer, as it is generated (spans left out)."""

    text: str


@dataclass(frozen=True)
class MediaReady:
    """A span of the answer decoded, as soon as it closed (the model goes on meanwhile).

    Attributes:
        span: the span the model wrote.
        media: its decoded media, in memory.
        file: where it was written (None when the turn is streamed with `save=False`).
    """

    span: SpanClosed
    media: Media
    file: Path | None = None


@dataclass(frozen=True)
class AudioChunk:
    """The next samples of a span's audio, decoded while the model still writes the span.

    The chunks of a span, in `index` order, are its whole waveform: each starts where the one
    before it ended (`offset`).

    Attributes:
        modality: the span's modality (speech).
        samples: float32 [n] at `sample_rate`.
        sample_rate: samples per second (the codec's: 16000 for speech).
        span: which span of the answer (0 for the first).
        index: the chunk's number in its span (0 for the first).
        offset: where `samples` start in the span's waveform, in samples.
    """

    modality: str
    samples: torch.Tensor
    sample_rate: int
    span: int
    index: int
    offset: int

    @property
    def seconds(self) -> float:
        """Where the chunk ends in the span's audio, in seconds."""
        return (self.offset + int(self.samples.numel())) / self.sample_rate


#: What `Conversation.stream` yields: the engine's events, text pieces, audio chunks (with
#: `stream_audio`), decoded spans, and last the `Reply`.
TurnEvent = (
    TokenEvent | SpanOpened | SpanClosed | Done | TextPiece | AudioChunk | MediaReady | Reply
)


@dataclass(frozen=True)
class PreparedTurn:
    """A user turn ready to generate: its attachments encoded, its prompt rendered and fitted.

    Attributes:
        message: the user turn as the history will hold it.
        to: the answer modality.
        target: the answer's decoding config.
        seed: seeds sampling and the decoders.
        prompt: the exact prompt the model continues.
        input_ids: its ids, int64 [1, T].
        dropped: how many of the oldest turns were cut so the prompt fits the context.
        voice: the voice prompt of spoken answers, if any.
        name: the text output file names are made of.
    """

    message: str
    to: str
    target: DecodingConfig
    seed: int
    prompt: str
    input_ids: Any
    dropped: int
    voice: Path | None = None
    name: str = ""

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens."""
        return int(self.input_ids.shape[-1])


def user_message(
    text: str, spans: Mapping[str, Sequence[str]], specs: Mapping[str, ModalitySpec]
) -> str:
    """A user turn by the reference's `interleaved` rule.

    Args:
        text: the typed instruction (may be empty).
        spans: protocol strings per modality.
        specs: the spec of each modality in `spans`.

    Returns:
        The spans, each followed by a space, modalities by their `turn_rank` (then name), then the
        text, stripped; wrapped in the `turn_template` of each modality present that has one.
    """
    order = sorted((name for name in spans if spans[name]), key=lambda n: (specs[n].turn_rank, n))
    message = "".join(span + " " for name in order for span in spans[name])
    message = (message + text).strip()
    for name in order:
        template = specs[name].turn_template
        if template is not None:
            # stripped first: with no text, the reference's `{speech}  Please` (two spaces)
            # becomes `{speech} Please`, the Speech-Instruction form the chat model was tuned on
            message = template.replace("{turn}", message)
    return message
