"""The Python API: load once, run tasks, get text and files back. The CLI is a thin layer over it.

```python
from anygpt_core.api import AnyGPT
gpt = AnyGPT.load()                      # the embedded demo; or AnyGPT.load("fnlp/AnyGPT-base")
result = gpt.run("text|music|a calm piano piece", seed=0)
result.text, result.files
```
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.config import DecodingConfig, draw_seed, load_decoding_config
from anygpt_core.engine import threads
from anygpt_core.engine.backends import make_backend
from anygpt_core.engine.base import Engine
from anygpt_core.engine.batcher import LocalEngine, Stop
from anygpt_core.engine.constraint import Row
from anygpt_core.engine.events import Done, Event, Request, SpanClosed, TokenEvent, spans_json
from anygpt_core.engine.loop import Generator
from anygpt_core.engine.prefix import DEFAULT_BYTES, PrefixCache
from anygpt_core.engine.vllm import VLLMEngine
from anygpt_core.errors import AnyGPTError, GenerationError, InputError
from anygpt_core.files import check_input_file, write_bytes
from anygpt_core.plugins import PluginSet, discover
from anygpt_core.prompts import InstructionBank, custom_prompt, from_text_prompt, to_text_prompt
from anygpt_core.protocol import codes_to_string
from anygpt_core.spec import Codec, ModalitySpec
from anygpt_core.tasks import Task, atomic_output, output_name, parse_instruction
from anygpt_core.tokens import TokenSpace

if TYPE_CHECKING:
    import torch

    from anygpt_core.tokenization import ReferencePromptEncoder

__all__ = [
    "TEXT_DECODING",
    "AnyGPT",
    "CodecSet",
    "Media",
    "Prepared",
    "Result",
    "text_answers_only",
]

logger = logging.getLogger(__name__)

#: Text decoding as the reference effectively ran it (transformers 4.34: implicit top_k 50,
#: min_new_tokens not applied).
TEXT_DECODING = DecodingConfig(
    do_sample=True, temperature=1.0, top_p=1.0, top_k=50, max_new_tokens=100, min_new_tokens=0
)


@dataclass(frozen=True)
class Media:
    """One decoded span: the codec's media (PIL image, waveform, ...), in memory.

    `data()` gives the bytes of a file of it (wav, flac, png, jpg, ...) without writing one.
    """

    modality: str
    value: Any
    suffix: str
    codecs: CodecSet = field(repr=False)

    def data(self, suffix: str | None = None) -> bytes:
        """The bytes of a file of this media in format `suffix` (default: the codec's)."""
        return self.codecs.to_bytes(self.modality, self.value, suffix=suffix or self.suffix)


@dataclass
class Result:
    """What one task produced: text, decoded media (in memory), and files when saved."""

    instruction: str
    prompt: str
    text: str = ""
    files: list[Path] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    spans: list[SpanClosed] = field(default_factory=list)
    new_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = ""
    seed: int | None = None
    notices: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what `anygpt run --json` prints)."""
        return {
            "instruction": self.instruction,
            "prompt": self.prompt,
            "text": self.text,
            "files": [str(f) for f in self.files],
            "spans": spans_json(self.spans),
            "new_tokens": self.new_tokens,
            "seconds": round(self.seconds, 3),
            "finish_reason": self.finish_reason,
            "seed": self.seed,
            "notices": list(self.notices),
        }


@dataclass(frozen=True)
class Prepared:
    """A task turned into a prompt and decoding settings, before any generation.

    `input_ids` (int64 [1, T]) are the prompt's tokens; `notices` say what was adjusted (a
    token budget capped at the model's context).
    """

    task: Task
    prompt: str
    open_span: str | None
    target_config: DecodingConfig
    seed: int
    input_ids: torch.Tensor | None = None
    notices: tuple[str, ...] = ()


class CodecSet:
    """The installed modalities' codecs, built lazily from option values.

    Safe to share between threads: codecs are built once, and their calls (which run models
    with caches and random state of their own) take turns.

    Args:
        plugins: the discovered plugins.
        options: codec option values by name; absent ones take the option's default.
        offload: codecs hold no device memory between their encodes and decodes: on a GPU their
            models wait on the CPU and move to the GPU for each call; on the CPU they are
            released after each call and load again on the next (`--offload codecs`).
    """

    def __init__(
        self,
        plugins: PluginSet,
        options: Mapping[str, Any] | None = None,
        *,
        offload: bool = False,
    ) -> None:
        self.plugins = plugins
        self.options = dict(options or {})
        self.offload = offload
        self._codecs: dict[str, Codec] = {}
        self._lock = threading.RLock()

    @property
    def lock(self) -> threading.RLock:
        """The lock the set's encodes and decodes take turns on (codecs are not thread-safe).

        A caller that runs a codec itself (a streamed decode) holds it while the codec computes.
        """
        return self._lock

    def spec(self, modality: str) -> ModalitySpec:
        """The modality's spec (PluginError naming the package to install if absent)."""
        return self.plugins.modality(modality)

    def codec(self, modality: str) -> Codec:
        """The modality's codec, built on first use (weights load on its first encode/decode)."""
        with self._lock:
            if modality not in self._codecs:
                spec = self.spec(modality)
                values = {o.name: self.options.get(o.name, o.default) for o in spec.options}
                self._codecs[modality] = spec.codec_factory(values)
            return self._codecs[modality]

    @contextmanager
    def _using(self, modality: str) -> Iterator[Codec]:
        """The modality's codec for one call (under the lock); with `offload`, parked after it."""
        import torch

        with self._lock:
            codec = self.codec(modality)
            device = getattr(codec, "device", None)
            on_gpu = self.offload and isinstance(device, torch.device) and device.type == "cuda"
            if on_gpu and isinstance(device, torch.device):
                _move_models(codec, device)
            try:
                yield codec
            finally:
                if self.offload:
                    self._park(modality, codec, on_gpu=on_gpu)

    def _park(self, modality: str, codec: Codec, *, on_gpu: bool) -> None:
        """Free the device memory a codec's models hold: to the CPU from a GPU, else released."""
        import gc

        import torch

        if on_gpu:
            _move_models(codec, torch.device("cpu"))
            torch.cuda.empty_cache()
        else:
            self._codecs.pop(modality, None)  # its weights load again on the next call
        gc.collect()

    def extension(self, modality: str) -> str:
        """The suffix of files written for `modality`: the codec's choice, else the spec's."""
        chosen = getattr(self.codec(modality), "output_extension", None)
        return str(chosen) if chosen else self.spec(modality).output_extension

    def encode(self, modality: str, source: Path | Any) -> torch.Tensor:  # noqa: ANN401
        """Codes int64 [K, T] of a file or array, checked against the modality's spec.

        Raises:
            InputError: a missing file, or one whose suffix is not among the spec's
                `input_extensions` (a file without suffix is left to the codec to read).
        """
        spec = self.spec(modality)
        if isinstance(source, (str, Path)):
            source = check_input_file(source)
            suffix = source.suffix.lower()
            if suffix and spec.input_extensions and suffix not in spec.input_extensions:
                raise InputError(
                    f"{source}: unsupported format; {modality} reads "
                    f"{', '.join(spec.input_extensions)}"
                )
        with self._using(modality) as codec:
            codes = codec.encode(source)
        _check_codes(spec, codes)
        return codes

    def to_string(self, modality: str, source: Path | Any) -> str:  # noqa: ANN401
        """The protocol string of a file or array."""
        return codes_to_string(self.spec(modality), self.encode(modality, source))

    def decode(
        self,
        modality: str,
        codes: torch.Tensor,
        *,
        condition: Path | None = None,
        seed: int | None = None,
        config: DecodingConfig | None = None,
    ) -> Any:  # noqa: ANN401 - the codec's media (PIL image, waveform, ...)
        """Media decoded from codes int64 [K, T], checked against the modality's spec first.

        `config` defaults to the modality's own decoding config.

        Raises:
            GenerationError: codes of the wrong shape or out of range.
            InputError: a condition file for a modality whose spec declares none.
        """
        spec = self.spec(modality)
        _check_codes(spec, codes)
        _check_condition(spec, condition)
        with self._using(modality) as codec:
            return codec.decode(
                codes, condition=condition, seed=seed, config=config or spec.decoding
            )

    def save(self, modality: str, media: Any, directory: Path, name: str) -> Path:  # noqa: ANN401
        """Write decoded media atomically as a new file `directory/name`; return the path written.

        The name's suffix picks the format; a clash gets `-1`, `-2`, ... before the suffix. The
        file is encoded in memory first and then written and synced in one go, so a full disk or
        a missing permission is one `OutputError` naming the path, whatever library encodes it.
        """
        data = self.to_bytes(modality, media, suffix=Path(name).suffix or None)
        return atomic_output(directory, name, lambda tmp: write_bytes(tmp, data))

    def to_bytes(self, modality: str, media: Any, *, suffix: str | None = None) -> bytes:  # noqa: ANN401
        """The file bytes of decoded media, written in memory: no temporary file.

        Args:
            modality: the modality whose codec decoded `media`.
            media: what `decode` returned.
            suffix: picks the format (".wav", ".flac", ".png", ...); default `extension(modality)`.

        Raises:
            InputError: the codec does not write `suffix`.
        """
        import io

        buffer = io.BytesIO()
        with self._lock:
            self.codec(modality).save(media, buffer, suffix=suffix or self.extension(modality))
        return buffer.getvalue()


def text_answers_only(config: DecodingConfig, target: str) -> DecodingConfig:
    """`config` for an answer in `target`: beams (`num_beams`) apply to text answers only.

    A media span decodes token by token under its length rules, so a config file written for
    text (the seed chat's generate_config.json: 5 beams) still serves a spoken or drawn answer.
    """
    if target == "text" or config.num_beams == 1:
        return config
    logger.info(
        "num_beams %d applies to text answers; %s decodes one beam", config.num_beams, target
    )
    return config.merged(num_beams=1)


def _move_models(codec: Codec, target: torch.device) -> None:
    """Move the torch modules a codec has loaded to `target`, tensor by tensor.

    Tensors on the meta device (parts a codec never loads, e.g. SEED-2's encoder when it only
    decodes) stay there; modules that accelerate already offloads (`--image-low-memory` on a GPU)
    are left to it.
    """
    import torch

    loaded = getattr(codec, "loaded_values", None)
    if loaded is None:
        return
    for value in loaded().values():
        parts = getattr(value, "components", {"": value}).values()  # a diffusers pipeline
        for module in parts:
            if isinstance(module, torch.nn.Module) and not hasattr(module, "_hf_hook"):
                for sub in module.modules():
                    for param in sub.parameters(recurse=False):
                        if not param.is_meta:
                            param.data = param.data.to(target)
                    for key, buffer in list(sub.named_buffers(recurse=False)):
                        if not buffer.is_meta:
                            setattr(sub, key, buffer.to(target))


def _check_condition(spec: ModalitySpec, condition: Path | str | None) -> None:
    """Refuse a condition file where the spec declares none, so no codec has to."""
    if condition is not None and spec.condition is None:
        raise InputError(f"{condition}: {spec.name} decoding takes no condition file")


def _check_codes(spec: ModalitySpec, codes: torch.Tensor) -> None:
    from anygpt_core.protocol import flatten_codes

    flatten_codes(spec, codes)  # raises GenerationError on a wrong shape or range


#: What a task brings to the decode stage: its prepared task and events, or its error.
_Finished = tuple[int, "Prepared | AnyGPTError", list[Event]]


class _DecodeStage:
    """Finishes `count` tasks on a worker thread as they end, while the engine generates others.

    Spans decode in the order the tasks end; files are written and results released in task
    order, so file names (a clash takes `-1`) and results are those of a one-by-one run. A
    task's decode or write error is its result; anything else (a bug) is raised by `ready` or
    `rest`. Use it as a context manager: leaving stops the worker, finished or not.

    The worker runs torch with the caller's thread count: codecs' results depend on it
    (SpeechTokenizer's and EnCodec's decoders in the last bits, which a 16-bit wav can keep),
    and must not depend on whether a task ran alone or in a batch.
    """

    def __init__(self, gpt: AnyGPT, count: int, *, started: float, save: bool) -> None:
        import torch

        self.gpt = gpt
        self.count = count
        self.started = started
        self.save = save
        self.threads = torch.get_num_threads()
        self._inbox: queue.SimpleQueue[_Finished | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[int, Result | AnyGPTError] | BaseException] = (
            queue.SimpleQueue()
        )
        self._released = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name="anygpt-decode", daemon=True)

    def __enter__(self) -> _DecodeStage:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()  # the worker stops after the task it is decoding, whatever is left
        self._inbox.put(None)
        self._thread.join()

    def put(
        self, index: int, task: Prepared | AnyGPTError, events: list[Event] | None = None
    ) -> None:
        """Hand over task `index`: its prepared task and its events ending in `Done`, or its error."""
        self._inbox.put((index, task, events or []))

    def ready(self) -> Iterator[tuple[int, Result | AnyGPTError]]:
        """The results released so far and not yet taken, in task order (without waiting)."""
        while not self._outbox.empty():  # only this thread takes from it
            yield self._taken(self._outbox.get())

    def rest(self) -> Iterator[tuple[int, Result | AnyGPTError]]:
        """The remaining results in task order, waiting for each."""
        while self._released < self.count:
            yield self._taken(threads.take(self._outbox))  # the decode stage computes meanwhile

    def _taken(
        self, item: tuple[int, Result | AnyGPTError] | BaseException
    ) -> tuple[int, Result | AnyGPTError]:
        if isinstance(item, BaseException):
            raise item
        self._released += 1
        return item

    def _work(self) -> None:
        import torch

        torch.set_num_threads(self.threads)  # OpenMP's setting is per thread
        pending: dict[int, AnyGPTError | tuple[Prepared, Result, list[Any]]] = {}
        following = 0
        try:
            while following < self.count:
                item = threads.take(self._inbox)  # the engine computes meanwhile
                if item is None or self._closed.is_set():
                    return
                index, task, events = item
                pending[index] = (
                    task if isinstance(task, AnyGPTError) else self._decode(task, events)
                )
                while following in pending:
                    self._outbox.put((following, self._complete(pending.pop(following))))
                    following += 1
        except BaseException as err:  # noqa: BLE001 - raised on the caller's thread by `ready`
            self._outbox.put(err)

    def _decode(
        self, prepared: Prepared, events: list[Event]
    ) -> AnyGPTError | tuple[Prepared, Result, list[Any]]:
        try:
            result = self.gpt._generated(prepared, events)
            return prepared, result, self.gpt._decode_answer(prepared, result.spans)
        except AnyGPTError as err:
            return err

    def _complete(
        self, item: AnyGPTError | tuple[Prepared, Result, list[Any]]
    ) -> Result | AnyGPTError:
        if isinstance(item, AnyGPTError):
            return item
        prepared, result, values = item
        try:
            return self.gpt._complete(
                prepared, result, values, started=self.started, save=self.save
            )
        except AnyGPTError as err:
            return err


class AnyGPT:
    """A loaded model with its token space, codecs and instruction phrasings.

    Build it with `AnyGPT.load`; `run` a task or `run_many`, `stream` or `stream_many` events.
    One object may be shared by several threads: their tasks are batched by `engine`.
    """

    def __init__(
        self,
        model: Any,  # noqa: ANN401 - a transformers causal LM, or None with an `engine`
        tokenizer: Any,  # noqa: ANN401 - a transformers tokenizer
        plugins: PluginSet,
        codecs: CodecSet,
        *,
        instructions: Path | None = None,
        output_dir: Path = Path("anygpt_output"),
        is_demo: bool = False,
        prompt_encoder: ReferencePromptEncoder | None = None,
        max_batch: int = 8,
        engine: Engine | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.plugins = plugins
        self.codecs = codecs
        self.instructions = instructions
        self.output_dir = Path(output_dir)
        self.is_demo = is_demo
        self.prompt_encoder = prompt_encoder
        self.space: TokenSpace = TokenSpace(tokenizer, plugins.modalities)
        #: what runs the requests of every caller (threads): by default a `LocalEngine` on
        #: `model`, `max_batch` rows at once; or the `engine` given (e.g. a `VLLMEngine`)
        self.engine: Engine
        if engine is not None:
            self.engine = engine
        else:
            self.backend = make_backend(model)
            self.generator = Generator(self.backend, self.space)
            self.engine = LocalEngine(self.generator, max_batch=max_batch)

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        plugins: PluginSet | None = None,
        codec_options: Mapping[str, Any] | None = None,
        instructions: Path | None = None,
        output_dir: Path | str = "anygpt_output",
        vllm_url: str | None = None,
        quantize: str | None = None,
        offload_codecs: bool = False,
        prefix_cache_mb: int = DEFAULT_BYTES // 2**20,
    ) -> AnyGPT:
        """Load a model by directory or hub id; with `model=None`, the embedded demo.

        `codec_options` hold codec option values by name (e.g. `music_tokenizer_path`); with the demo,
        options left out point at the demo's tiny codec checkpoints. With `vllm_url` only the
        tokenizer loads (no weights): generation goes to the vLLM server there, which must serve
        the same model with the `anygpt-vllm` processor installed; it is asked for its model now.
        `quantize` (int8, int4) quantises the LLM's layers as they load; `offload_codecs` keeps
        the codecs off the device between their calls (see `CodecSet`). `prefix_cache_mb` is the
        local engine's memory for keys and values that later prompts reuse (0: none; see
        `anygpt_core.engine.prefix`).
        """
        from anygpt_core.demo import ensure_demo
        from anygpt_core.loading import load_language_model, load_tokenizer, resolve_model_dir
        from anygpt_core.tokenization import ReferencePromptEncoder

        plugins = plugins or discover()
        options = {k: v for k, v in (codec_options or {}).items() if v is not None}
        is_demo = model is None
        location: str | Path
        if model is None:
            demo = ensure_demo(plugins)
            location = demo.model_dir
            options = {**demo.options, **options}
        else:
            location = model
        directory = resolve_model_dir(location)  # once: a hub id is looked up in the cache here
        lm: Any = None
        if vllm_url is None:
            lm, tokenizer = load_language_model(
                directory, device=device, dtype=dtype, quantize=quantize
            )
        else:
            tokenizer = load_tokenizer(directory)
        encoder = ReferencePromptEncoder.from_directory(directory, tokenizer)
        engine = None
        if vllm_url is not None:
            engine = VLLMEngine(vllm_url, TokenSpace(tokenizer, plugins.modalities))
            engine.info()  # a server that is down fails here, before any task
        gpt = cls(
            lm,
            tokenizer,
            plugins,
            CodecSet(plugins, options, offload=offload_codecs),
            instructions=instructions,
            output_dir=Path(output_dir),
            is_demo=is_demo,
            prompt_encoder=encoder,
            engine=engine,
        )
        if engine is None:
            budget = prefix_cache_mb * 2**20
            gpt.backend.prefix_cache = PrefixCache(budget) if budget else None
        # loading ran on this thread's OpenMP team; from here on the engine's worker computes
        # (this thread may go on to wait in a server's event loop, never calling torch again)
        threads.release()
        return gpt

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Token ids int64 [1, T] of a prompt, as the reference's tokenizer produced them.

        With a SentencePiece `tokenizer.model` in the model directory, `ReferencePromptEncoder`
        reproduces transformers 4.34 (what the published models were trained with); otherwise the
        loaded tokenizer encodes.
        """
        if self.prompt_encoder is not None:
            return self.prompt_encoder.encode(prompt)
        ids: torch.Tensor = self.tokenizer(prompt, return_tensors="pt").input_ids
        return ids

    def config_for(self, modality: str) -> DecodingConfig:
        """The default decoding config of a modality (`text` included)."""
        return TEXT_DECODING if modality == "text" else self.codecs.spec(modality).decoding

    def prepare(
        self,
        task: Task | str,
        *,
        config: Path | None = None,
        seed: int | None = None,
        force_span: bool = True,
        **overrides: Any,  # noqa: ANN401 - DecodingConfig fields
    ) -> Prepared:
        """Check a task, encode its input and build the exact prompt; no generation yet.

        Args:
            task: a `Task` or a line in the seed's format.
            config: a decoding config JSON file applied to the target modality's default.
            seed: seeds the phrasing choice, sampling and decoders; None picks one (reported).
            force_span: for text -> modality, start the answer with the modality's start token (as
                the reference chat's force flags did), so the model always writes a span.
            overrides: decoding fields (e.g. `max_new_tokens`) applied last; beams (`num_beams`,
                from here or `config`) apply to text answers only.
        """
        task = parse_instruction(task) if isinstance(task, str) else task
        seed = draw_seed(seed)
        for name in {task.source, task.target} - {"text"}:
            self.codecs.spec(name)
            self.space.require(name)
        if task.target != "text":
            self.codecs.extension(task.target)  # a bad format option fails before generating
        if task.source != "text" and task.target != "text":
            raise InputError(
                f"task {task.source}|{task.target}: the base model maps a modality to text or text "
                "to a modality; use `anygpt chat` for other combinations"
            )
        if task.condition is not None and task.target == "text":
            raise InputError(f"{task.condition}: a voice or condition file needs a media target")
        if task.target != "text":
            _check_condition(self.codecs.spec(task.target), task.condition)  # before generating
        target_config = self.config_for(task.target)
        if config is not None:
            target_config = load_decoding_config(
                Path(config), base=target_config, other_fields=self.plugins.decoding_fields()
            )
        target_config = text_answers_only(target_config.merged(**overrides), task.target)
        bank = InstructionBank.from_specs(
            self.plugins.modalities, seed=seed, path=self.instructions
        )
        open_span = None
        if task.source == "text" and task.target == "text":
            prompt = custom_prompt(task.payload)
        elif task.source == "text":
            prompt = from_text_prompt(bank.choose(task.target, "from_text"), task.payload)
            if force_span:
                open_span = task.target
                prompt += " " + self.space.require(task.target).spec.start
        else:
            span = self.codecs.to_string(task.source, Path(task.payload).expanduser())
            prompt = to_text_prompt(bank.choose(task.source, "to_text"), span)
        if task.condition is not None:
            check_input_file(task.condition, what="voice prompt")
        input_ids = self.encode_prompt(prompt)
        target_config, notices = self._fit_context(input_ids.shape[-1], target_config)
        return Prepared(task, prompt, open_span, target_config, seed, input_ids, notices)

    @property
    def context_length(self) -> int | None:
        """Positions the model holds (its `max_position_embeddings`), None if it does not say."""
        value = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    def _fit_context(
        self, prompt_tokens: int, config: DecodingConfig
    ) -> tuple[DecodingConfig, tuple[str, ...]]:
        """Refuse a prompt that leaves no room to answer; cap the budget at the room left.

        Raises:
            InputError: the prompt alone fills the model's context.
        """
        context = self.context_length
        if context is None:
            return config, ()
        room = context - prompt_tokens
        if room < 1:
            raise InputError(
                f"input too long: the prompt is {prompt_tokens} tokens and the model holds "
                f"{context} positions; shorten the input"
            )
        if config.max_new_tokens <= room:
            return config, ()
        notice = (
            f"max_new_tokens {config.max_new_tokens} capped at {room}: the prompt takes "
            f"{prompt_tokens} of the model's {context} positions"
        )
        return config.merged(max_new_tokens=room), (notice,)

    def row(
        self,
        target: str,
        config: DecodingConfig,
        *,
        open_span: str | None = None,
        stop_after_span: bool = False,
    ) -> Row:
        """The span rules of an answer in `target`: `config` for it, the defaults elsewhere.

        A media answer's text (around its spans) samples with `TEXT_DECODING`; every modality's
        spans with their spec's decoding, the target's with `config`. `config.max_new_tokens`
        bounds the whole answer.
        """
        span_configs = {name: spec.decoding for name, spec in self.plugins.modalities.items()}
        if target != "text":
            span_configs[target] = config
        text_config = config if target == "text" else TEXT_DECODING
        return Row(
            text_config,
            span_configs,
            config.max_new_tokens,
            open_span=open_span,
            stop_after_span=stop_after_span,
        )

    def decode_spans(
        self,
        spans: Sequence[SpanClosed],
        *,
        target: str,
        config: DecodingConfig,
        seed: int,
        name: str,
        conditions: Mapping[str, Path] | None = None,
        save: bool = True,
        directory: Path | None = None,
    ) -> tuple[list[Media], list[Path]]:
        """Decode an answer's spans, and write each as a new file (in `directory`) with `save`.

        Args:
            spans: the spans the model wrote.
            target: the answer modality: its spans decode with `config` (a `--config` file, flags),
                the others with their defaults.
            config: the answer's decoding config.
            seed: seeds sampling decoders.
            name: the text file names are made of (`output_name`).
            conditions: a condition file per modality (a voice prompt).
            save: write files; without it, only the media in memory.
            directory: where files go (default `output_dir`).
        """
        values = self._decode_values(
            spans, target=target, config=config, seed=seed, conditions=conditions
        )
        return self._keep(spans, values, name=name, save=save, directory=directory)

    def _decode_values(
        self,
        spans: Sequence[SpanClosed],
        *,
        target: str,
        config: DecodingConfig,
        seed: int,
        conditions: Mapping[str, Path] | None = None,
    ) -> list[Any]:
        """The codecs' media of each span, in memory (see `decode_spans`)."""
        return [
            self.codecs.decode(
                span.modality,
                span.codes,
                condition=(conditions or {}).get(span.modality),
                seed=seed,
                config=config if span.modality == target else None,
            )
            for span in spans
        ]

    def _keep(
        self,
        spans: Sequence[SpanClosed],
        values: Sequence[Any],
        *,
        name: str,
        save: bool,
        directory: Path | None = None,
    ) -> tuple[list[Media], list[Path]]:
        """Decoded spans as `Media`, each also written as a new file with `save`."""
        media: list[Media] = []
        files: list[Path] = []
        for span, value in zip(spans, values, strict=True):
            suffix = self.codecs.extension(span.modality)
            media.append(Media(span.modality, value, suffix, self.codecs))
            if save:
                filename = output_name(name or span.modality, suffix)
                where = self.output_dir if directory is None else directory
                files.append(self.codecs.save(span.modality, value, where, filename))
        return media, files

    def request(self, prepared: Prepared) -> Request:
        """The engine request of a prepared task: prompt ids, span rules, configs and seed."""
        row = self.row(
            prepared.task.target,
            prepared.target_config,
            open_span=prepared.open_span,
            stop_after_span=prepared.open_span is not None,
        )
        ids = prepared.input_ids
        return Request(
            self.encode_prompt(prepared.prompt) if ids is None else ids, row, prepared.seed
        )

    def stream(self, prepared: Prepared) -> Iterator[Event]:
        """Generate for a prepared task, yielding the loop's events (the last one is `Done`)."""
        for _, event in self.stream_many([prepared]):
            yield event

    def stream_many(
        self, prepared: Sequence[Prepared], *, stop: Stop | None = None
    ) -> Iterator[tuple[int, Event]]:
        """Generate for many prepared tasks, batched, yielding `(task index, event)` pairs.

        Safe to call from several threads at once: the engine batches every caller's tasks (at
        most `engine.max_batch` rows together). Each task's last event is its `Done`; leaving the
        loop early cancels the tasks still running, and so does `stop` (a flag set from another
        thread, a deadline that raises `DeadlineError`).
        """
        return self.engine.submit([self.request(p) for p in prepared], stop=stop)

    def run(
        self,
        task: Task | str,
        *,
        on_event: Callable[[Event], None] | None = None,
        dry_run: bool = False,
        save: bool = True,
        **options: Any,  # noqa: ANN401 - see `prepare`
    ) -> Result:
        """Run one task end to end: prompt, generate, decode spans (to files in `output_dir`).

        With `save=False` nothing is written: `Result.media` holds the decoded media.
        """
        started = time.perf_counter()
        prepared = self.prepare(task, **options)
        if dry_run:
            return Result(
                prepared.task.instruction,
                prepared.prompt,
                seed=prepared.seed,
                notices=prepared.notices,
            )
        events: list[Event] = []
        for event in self.stream(prepared):
            if on_event is not None:
                on_event(event)
            events.append(event)
        return self.finish(prepared, events, started=started, save=save)

    def run_many(
        self,
        tasks: Sequence[Task | str],
        *,
        on_event: Callable[[int, Event], None] | None = None,
        on_result: Callable[[int, Result | AnyGPTError], None] | None = None,
        save: bool = True,
        **options: Any,  # noqa: ANN401 - see `prepare`
    ) -> list[Result | AnyGPTError]:
        """Run many tasks, generated together in batches; results in the order of `tasks`.

        A task's spans decode as soon as its generation ends, on a decode stage beside the
        engine, which goes on generating the others; files are written in task order, so
        outputs are those of running the tasks one by one. `on_result(index, result)` is called
        on this thread for each task in order, as soon as it and the tasks before it are done.

        A task that fails (a bad instruction, a missing file, a budget too small for its span, a
        span that cannot be decoded) gets its error in its place; the others run, as they would
        one by one. `seed` (in `options`) seeds every task alike.
        """
        started = time.perf_counter()
        stage = _DecodeStage(self, len(tasks), started=started, save=save)
        prepared: list[Prepared] = []
        requests: list[Request] = []
        where: list[int] = []
        for i, task in enumerate(tasks):
            try:
                one = self.prepare(task, **options)
                request = self.request(one)
                # checked here, one by one: the engine refuses a whole submission for one bad row
                self.engine.check(request)
            except AnyGPTError as err:
                stage.put(i, err)
                continue
            prepared.append(one)
            requests.append(request)
            where.append(i)
        results: list[Result | AnyGPTError | None] = [None] * len(tasks)

        def release(ready: Iterable[tuple[int, Result | AnyGPTError]]) -> None:
            for i, result in ready:
                results[i] = result
                if on_result is not None:
                    on_result(i, result)

        events: list[list[Event]] = [[] for _ in prepared]
        with stage:
            for index, event in self.engine.submit(requests):
                if on_event is not None:
                    on_event(where[index], event)
                events[index].append(event)
                if isinstance(event, Done):
                    stage.put(where[index], prepared[index], events[index])
                release(stage.ready())
            for index, evs in enumerate(events):  # an engine that ended a task without its Done
                if not (evs and isinstance(evs[-1], Done)):
                    stage.put(where[index], prepared[index], evs)
            release(stage.rest())
        return [r for r in results if r is not None]

    def finish(
        self, prepared: Prepared, events: list[Event], *, started: float, save: bool = True
    ) -> Result:
        """A task's result from its events: text, and each span decoded (and saved with `save`)."""
        result = self._generated(prepared, events)
        values = self._decode_answer(prepared, result.spans)
        return self._complete(prepared, result, values, started=started, save=save)

    def _generated(self, prepared: Prepared, events: list[Event]) -> Result:
        """A task's result before decoding: its text, spans, token count and finish reason."""
        result = Result(
            prepared.task.instruction, prepared.prompt, seed=prepared.seed, notices=prepared.notices
        )
        done = events[-1] if events else None
        if not isinstance(done, Done):
            raise GenerationError("generation ended without a Done event")
        result.new_tokens = len(done.token_ids)
        result.finish_reason = done.reason
        result.spans = done.spans
        result.text = self.text_of(events)
        return result

    def _decode_answer(self, prepared: Prepared, spans: Sequence[SpanClosed]) -> list[Any]:
        """The media of a task's spans: its target's with its config (and condition file)."""
        task = prepared.task
        conditions = {}
        if task.condition:
            conditions[task.target] = Path(task.condition).expanduser()
        return self._decode_values(
            spans,
            target=task.target,
            config=prepared.target_config,
            seed=prepared.seed,
            conditions=conditions,
        )

    def _complete(
        self,
        prepared: Prepared,
        result: Result,
        values: Sequence[Any],
        *,
        started: float,
        save: bool,
    ) -> Result:
        """`result` with its decoded media, written as files with `save`, and its time."""
        result.media, result.files = self._keep(
            result.spans, values, name=prepared.task.payload, save=save
        )
        result.seconds = time.perf_counter() - started
        return result

    def text_of(self, events: list[Event]) -> str:
        """The text the model wrote: tokens generated outside spans, end-of-turn tokens left out."""
        ids = [
            e.token_id
            for e in events
            if isinstance(e, TokenEvent)
            and e.modality is None
            and e.token_id not in self.space.stop_ids
            and e.token_id not in self.space.start_ids
        ]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
