"""Multi-turn chat: interleaved multimodal turns in a chat template, with a history that fits the context.

```python
from anygpt_core.api import AnyGPT
from anygpt_core.chat import Conversation
chat = Conversation(AnyGPT.load())
reply = chat.send("Draw me a beach", to="image", seed=0)
reply.text, reply.files, chat.history
```

A user turn is built with the reference's `interleaved` rule (REFERENCE.md §2): each span and a
space, modalities in the `turn_rank` order their specs declare, then the text; a modality with a
`turn_template` (speech: the `Speech-Instruction` task prompt) wraps the whole when present. The history
holds exactly what the model said, text and spans as protocol strings, never the prompt's echo
(REFERENCE.md §9.5-9.7).

`Conversation.stream` yields a turn as it is made; with `stream_audio=True` a spoken answer also
comes in `AudioChunk`s, decoded window by window beside generation (`SpanAudio`,
docs/streaming.md).
"""

from anygpt_core.chat.audio import SpanAudio
from anygpt_core.chat.conversation import Conversation
from anygpt_core.chat.text import TextStream
from anygpt_core.chat.turns import (
    CHAT_TEXT_DECODING,
    TEMPLATES,
    VOICE,
    AudioChunk,
    MediaReady,
    PreparedTurn,
    Reply,
    TextPiece,
    Turn,
    TurnEvent,
    user_message,
)

__all__ = [
    "CHAT_TEXT_DECODING",
    "TEMPLATES",
    "VOICE",
    "AudioChunk",
    "Conversation",
    "MediaReady",
    "PreparedTurn",
    "Reply",
    "SpanAudio",
    "TextPiece",
    "TextStream",
    "Turn",
    "TurnEvent",
    "user_message",
]
