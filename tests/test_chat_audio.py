"""`Conversation.stream(stream_audio=True)` and `SpanAudio`: a spoken answer's audio in chunks
while the model still writes it, on the demo model with the demo speech codec."""

from __future__ import annotations

import time

import pytest
import torch

from anygpt_core.chat import AudioChunk, Conversation, MediaReady, Reply, SpanAudio
from anygpt_core.engine.events import SpanClosed, SpanOpened, TokenEvent

pytest.importorskip("anygpt_speech")


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    from anygpt_core.api import AnyGPT

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANYGPT_LOAD_PLUGINS", "speech,music")
        loaded = AnyGPT.load(device="cpu", output_dir=tmp_path_factory.mktemp("out"))
    loaded.codecs.codec("speech").tokenizer  # noqa: B018 - weights loaded before any timing
    return loaded


def test_streamed_turn_yields_chunks_that_make_the_spans_audio(gpt):
    chat = Conversation(gpt, max_new_tokens=130)
    items = list(chat.stream("Say something", to="speech", seed=5, stream_audio=True))
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    (span,) = [i for i in items if isinstance(i, SpanClosed)]
    (ready,) = [i for i in items if isinstance(i, MediaReady)]
    reply = items[-1]
    assert isinstance(reply, Reply) and reply.files == [ready.file] and ready.file.is_file()
    assert len(chunks) >= 3 and [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.sample_rate == 16000 and c.span == 0 and c.modality == "speech" for c in chunks)
    offsets = [0, *(c.offset + c.samples.numel() for c in chunks[:-1])]
    assert [c.offset for c in chunks] == offsets  # each starts where the last ended
    joined = torch.cat([c.samples for c in chunks])
    assert torch.equal(ready.media.value, joined)  # the span's media is its chunks, not a redecode
    assert joined.numel() == span.codes.shape[1] * 320
    # the chunks are `decode_stream` of the span's codes with the turn's seed and config
    codec = gpt.codecs.codec("speech")
    config = chat.target_config("speech")
    assert torch.equal(
        joined, torch.cat(list(codec.decode_stream(span.codes, seed=5, config=config)))
    )
    kinds = [type(i).__name__ for i in items]
    assert max(k for k, t in enumerate(kinds) if t == "AudioChunk") < kinds.index("MediaReady")


def test_without_stream_audio_nothing_changes(gpt):
    chat = Conversation(gpt, max_new_tokens=60)
    items = list(chat.stream("Say something", to="speech", seed=3, save=False))
    assert not any(isinstance(i, AudioChunk) for i in items)
    (ready,) = [i for i in items if isinstance(i, MediaReady)]
    (span,) = [i for i in items if isinstance(i, SpanClosed)]
    whole = gpt.codecs.decode("speech", span.codes, seed=3, config=chat.target_config("speech"))
    assert torch.equal(ready.media.value, whole)


def test_a_codec_that_cannot_stream_gives_media_only(gpt):
    chat = Conversation(gpt, max_new_tokens=20)
    items = list(chat.stream("Play", to="music", seed=1, save=False, stream_audio=True))
    assert not any(isinstance(i, AudioChunk) for i in items)
    assert any(isinstance(i, MediaReady) for i in items)
    assert not SpanAudio(gpt, seed=0).streams("music")  # four codebooks, no decode_stream


def test_first_chunk_is_ready_before_the_span_ends(gpt):
    """Fed one window of codes, the span still open: a chunk arrives, no more codes needed."""
    space = gpt.space.require("speech")
    audio = SpanAudio(gpt, seed=0)
    assert list(audio.feed(SpanOpened("speech", 1500))) == []
    for code in range(50):  # one window (50 frames)
        assert list(audio.feed(TokenEvent(int(space.code_ids[code * 7 % 1024]), "speech"))) == []
    deadline = time.monotonic() + 30
    chunks: list[AudioChunk] = []
    while not chunks and time.monotonic() < deadline:  # no more codes: the window is decoded
        time.sleep(0.02)
        chunks = list(audio.ready())
    assert chunks and chunks[0].index == 0 and chunks[0].samples.numel() == (50 - 4) * 320
    audio.close()  # an abandoned span: its decoder stops


def test_a_bad_code_raises_from_the_feed(gpt):
    from anygpt_core.errors import GenerationError

    audio = SpanAudio(gpt, seed=0)
    list(audio.feed(SpanOpened("speech", 1500)))
    codes = torch.full((1, 0), 0, dtype=torch.long)
    with pytest.raises(GenerationError, match="no codes"):  # a span closed with no code
        list(audio.feed(SpanClosed("speech", codes, forced=False)))
