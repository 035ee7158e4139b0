"""Spoken answers decoded while they are generated, a window at a time, on a thread per span."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.chat.turns import AudioChunk
from anygpt_core.config import DecodingConfig
from anygpt_core.engine import threads
from anygpt_core.engine.events import (
    Event,
    SpanClosed,
    SpanOpened,
    TokenEvent,
)

if TYPE_CHECKING:
    import torch

    from anygpt_core.api import AnyGPT


class _Cancelled(Exception):
    """Raised into a span's decoder when its turn is abandoned, so no window is decoded in vain."""


class _SpanDecoder:
    """One span's codes decoded on a thread of its own, chunk by chunk, as they arrive.

    The thread holds the codec set's lock while the codec computes and lets it go while it waits
    for the model's next code, so other requests' encodes and decodes take turns with it.

    Args:
        chunks: the codec's `decode_stream` with its options bound: codes (ints) -> waveforms.
        lock: the codec set's lock.
    """

    def __init__(
        self, chunks: Callable[[Iterable[int]], Iterator[torch.Tensor]], lock: threading.RLock
    ) -> None:
        self._codes: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._out: queue.SimpleQueue[torch.Tensor | BaseException | None] = queue.SimpleQueue()
        self._lock = lock
        self._cancelled = threading.Event()
        self.finished = False
        self.pieces: list[torch.Tensor] = []
        self._thread = threading.Thread(
            target=self._run, args=(chunks,), name="anygpt-audio", daemon=True
        )
        self._thread.start()

    def put(self, code: int) -> None:
        """One more code of the span."""
        self._codes.put(code)

    def end(self) -> None:
        """The span closed: its last, shorter window is decoded."""
        self._codes.put(None)

    def cancel(self) -> None:
        """Stop decoding: the turn was abandoned."""
        self._cancelled.set()
        self._codes.put(None)

    def _arriving(self) -> Iterator[int]:
        while True:
            try:
                code = self._codes.get_nowait()
            except queue.Empty:
                self._lock.release()  # held only while the codec computes
                threads.release()  # and so are its OpenMP helpers: the model goes on meanwhile
                try:
                    code = self._codes.get()
                finally:
                    self._lock.acquire()
            if self._cancelled.is_set():
                raise _Cancelled
            if code is None:
                return
            yield code

    def _run(self, chunks: Callable[[Iterable[int]], Iterator[torch.Tensor]]) -> None:
        try:
            with self._lock:
                for chunk in chunks(self._arriving()):
                    self._out.put(chunk)
        except _Cancelled:
            pass
        except BaseException as err:  # noqa: BLE001 - raised again in the turn's thread
            self._out.put(err)
        finally:
            self._out.put(None)

    def take(self, *, wait: bool) -> Iterator[torch.Tensor]:
        """The chunks decoded so far; with `wait`, every chunk until the span's last.

        Raises:
            AnyGPTError: the codec's error (a bad code, a weight load).
        """
        while not self.finished:
            try:
                item = self._out.get() if wait else self._out.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self.finished = True
            elif isinstance(item, BaseException):
                self.finished = True
                raise item
            else:
                self.pieces.append(item)
                yield item


class SpanAudio:
    """An answer's spans turned into audio while they are generated, a window at a time.

    Feed it the engine's events in order. A span whose codec streams (it has `decode_stream`,
    one codebook, and the codecs are not offloaded) is decoded on a thread of its own as its
    codes arrive, so generation never waits for it; `feed` returns the chunks ready by then, and
    at the span's end waits for its last ones. Other spans give no chunks: they are decoded whole
    when they close (`MediaReady`), as without streaming.

    Usable on any event stream, a task's (`AnyGPT.stream`) as well as a turn's:

    ```python
    audio = SpanAudio(gpt, seed=0)
    for event in gpt.stream(prepared):
        for chunk in audio.feed(event):
            player.write(chunk.samples.numpy())
    ```

    Args:
        gpt: the loaded model.
        seed: seeds the decoders, as `AnyGPT.decode_spans`.
        configs: the decoding config of a modality (the answer's); others use their default.
        conditions: a condition file per modality (a voice prompt).
    """

    def __init__(
        self,
        gpt: AnyGPT,
        *,
        seed: int | None,
        configs: Mapping[str, DecodingConfig] | None = None,
        conditions: Mapping[str, Path] | None = None,
    ) -> None:
        self.gpt = gpt
        self.seed = seed
        self.configs = dict(configs or {})
        self.conditions = dict(conditions or {})
        self.spans = 0  # spans opened so far
        self._open: _SpanDecoder | None = None
        self._rate = 0
        self._modality = ""
        self._offset = 0
        self._index = 0
        self.waveform: torch.Tensor | None = None

    def streams(self, modality: str) -> bool:
        """Whether spans of `modality` are decoded as they are generated."""
        codecs = self.gpt.codecs
        if codecs.offload or codecs.spec(modality).num_codebooks != 1:
            return False
        codec = codecs.codec(modality)
        return callable(getattr(codec, "decode_stream", None)) and bool(
            getattr(codec, "sample_rate", None)
        )

    def feed(self, event: Event) -> Iterator[AudioChunk]:
        """Take the next engine event; yield the chunks decoded by now.

        At a `SpanClosed` of a streamed span, waits for its last chunks; `waveform` is then the
        whole span's audio (their concatenation), else None.

        Raises:
            AnyGPTError: the codec's error for a streamed span (a bad code, a weight load).
        """
        if isinstance(event, SpanOpened):
            self._start(event.modality)
        elif isinstance(event, TokenEvent) and self._open is not None:
            code = int(self.gpt.space.id_to_code[event.token_id])
            if event.modality == self._modality and code >= 0:
                self._open.put(code)
        elif isinstance(event, SpanClosed):
            self.waveform = None
            if self._open is not None:
                self._open.end()
                yield from self._chunks(self._open, wait=True)
                import torch

                self.waveform = torch.cat(self._open.pieces) if self._open.pieces else None
                self._open = None
            return
        yield from self.ready()

    def ready(self) -> Iterator[AudioChunk]:
        """The chunks of the open span decoded since the last `feed` or `ready`, without waiting.

        For a caller that polls between events (generation slower than decoding, a UI timer).
        """
        if self._open is not None:
            yield from self._chunks(self._open, wait=False)

    def close(self) -> None:
        """Stop decoding an open span (the answer was abandoned)."""
        if self._open is not None:
            self._open.cancel()
            self._open = None

    def _start(self, modality: str) -> None:
        self.close()
        self.spans += 1
        if not self.streams(modality):
            return
        codecs = self.gpt.codecs
        codec: Any = codecs.codec(modality)
        spec = codecs.spec(modality)
        options = {
            "condition": self.conditions.get(modality),
            "seed": self.seed,
            "config": self.configs.get(modality, spec.decoding),
        }
        self._modality, self._rate = modality, int(codec.sample_rate)
        self._offset = self._index = 0
        self._open = _SpanDecoder(
            lambda codes: codec.decode_stream(codes, **options),
            codecs.lock,  # the codec set's: its calls take turns
        )

    def _chunks(self, decoder: _SpanDecoder, *, wait: bool) -> Iterator[AudioChunk]:
        for samples in decoder.take(wait=wait):
            yield AudioChunk(
                self._modality, samples, self._rate, self.spans - 1, self._index, self._offset
            )
            self._index += 1
            self._offset += int(samples.numel())
