"""The speech codec: audio -> semantic codes (ASR input), semantic codes -> audio (TTS output).

Encoding keeps RVQ layer 0 of SpeechTokenizer (50 codes per second). Decoding lets SoundStorm
predict the 7 acoustic layers, in the voice of an optional prompt file, and SpeechTokenizer's
decoder turns all 8 layers into 16 kHz audio. Weights load on first use, torch only then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import Field, ValidationError

from anygpt_core.audio import load_audio, to_mono_tensor, write_wav
from anygpt_core.checkpoints import check_state_dict, read_state_dict, resolve_checkpoint
from anygpt_core.codec import CodecOptions, LazyCodec
from anygpt_core.config import format_validation_error
from anygpt_core.errors import ConfigError, InputError
from anygpt_core.protocol import check_codes
from anygpt_speech.checkpoints import (
    HUB_REPO,
    SOUNDSTORM_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    load_json,
)
from anygpt_speech.streaming import (
    DEFAULT_CONTEXT,
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    WaveStitcher,
    check_stream_sizes,
    predict_windows,
    stitch,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from speechtokenizer import SpeechTokenizer

    from anygpt_core.config import DecodingConfig
    from anygpt_speech.soundstorm import SoundStorm, SoundStormConfig
    from anygpt_speech.tokenizer import SpeechTokenizerConfig

__all__ = ["DEFAULT_VC_STEPS", "SpeechCodec", "SpeechOptions"]

logger = logging.getLogger(__name__)

#: SoundStorm steps the reference used (its generate_config.json `vc_steps`).
DEFAULT_VC_STEPS = 3


class SpeechOptions(CodecOptions):
    """The speech codec's options (`--speech-*`, `--soundstorm-*`, `--voice-prompt-seconds`)."""

    speech_tokenizer_path: str = Field(
        HUB_REPO,
        description="SpeechTokenizer checkpoint: ckpt.dev file, its directory, or a hub id.",
    )
    speech_tokenizer_config: Path | None = Field(
        None, description="SpeechTokenizer config.json (default: beside the checkpoint)."
    )
    soundstorm_path: str = Field(
        HUB_REPO,
        description="SoundStorm checkpoint (.pt state dict), its directory, or a hub id.",
    )
    soundstorm_config: Path | None = Field(
        None,
        description="JSON with codebook_size, num_quantizers, dim, depth, heads, dim_head "
        "(default: the published architecture).",
    )
    soundstorm_steps: int | None = Field(
        None,
        gt=0,
        le=10_000,
        description="Mask-predict steps of SoundStorm's first acoustic layer "
        f"(default: the speech decoding config's vc_steps, {DEFAULT_VC_STEPS}).",
    )
    speech_max_seconds: float = Field(
        60.0, gt=0, description="Longest speech input accepted, in seconds."
    )
    voice_prompt_seconds: float = Field(
        3.0, gt=0, description="Seconds from the start of a voice prompt used as the voice."
    )
    speech_device: str = Field(
        "auto", description="Device of the speech models: auto, cpu, cuda or cuda:N."
    )


class SpeechCodec(LazyCodec[SpeechOptions]):
    """SpeechTokenizer + SoundStorm behind the `Codec` protocol.

    Built from `SpeechOptions` values by name; they are read on first use, and each model loads
    once, so building the codec never fails and never touches a file.
    """

    Options = SpeechOptions

    @property
    def device(self) -> torch.device:
        """`--speech-device`: auto (cuda when available), cpu, cuda or cuda:N."""
        from anygpt_core.loading import pick_device

        return self.lazy(
            "device", lambda: pick_device(self.options.speech_device, flag="--speech-device")
        )

    # -- weights ---------------------------------------------------------------------------------

    @property
    def _tokenizer_files(self) -> tuple[Path, Path, dict[str, Any], SpeechTokenizerConfig]:
        return self.lazy("tokenizer files", self._find_tokenizer)

    def _find_tokenizer(self) -> tuple[Path, Path, dict[str, Any], SpeechTokenizerConfig]:
        from anygpt_speech.tokenizer import SpeechTokenizerConfig

        source = self.options.speech_tokenizer_path
        flag = "--speech-tokenizer-path"
        ckpt = resolve_checkpoint(source, flag=flag, filename=TOKENIZER_FILE)
        given = self.options.speech_tokenizer_config
        if given:
            config_path = resolve_checkpoint(
                given, flag="--speech-tokenizer-config", filename=TOKENIZER_CONFIG_FILE
            )
        elif Path(source).expanduser().exists():
            config_path = ckpt.parent / "config.json"
            if not config_path.is_file():
                raise ConfigError(
                    f"{flag} {ckpt}: no config.json beside it; pass --speech-tokenizer-config FILE"
                )
        else:
            config_path = resolve_checkpoint(source, flag=flag, filename=TOKENIZER_CONFIG_FILE)
        raw = load_json(config_path, flag="--speech-tokenizer-config")
        return ckpt, config_path, raw, SpeechTokenizerConfig.from_json(raw, source=str(config_path))

    @property
    def tokenizer_config(self) -> SpeechTokenizerConfig:
        """The validated SpeechTokenizer config (reads only the JSON file)."""
        return self._tokenizer_files[3]

    @property
    def sample_rate(self) -> int:
        """Audio rate of inputs after resampling and of decoded audio (16 kHz when published)."""
        return self.tokenizer_config.sample_rate

    @property
    def tokenizer(self) -> SpeechTokenizer:
        """The SpeechTokenizer model, loaded on first use."""
        return self.lazy("tokenizer", self._load_tokenizer)

    def _load_tokenizer(self) -> SpeechTokenizer:
        from anygpt_speech.tokenizer import load_speech_tokenizer

        ckpt, config_path, raw, _ = self._tokenizer_files
        started = time.perf_counter()
        model = load_speech_tokenizer(ckpt, config_path, raw).to(self.device)
        logger.info("SpeechTokenizer %s loaded in %.1f s", ckpt, time.perf_counter() - started)
        return model

    @property
    def soundstorm(self) -> SoundStorm:
        """The SoundStorm model, loaded on first use and checked against the tokenizer's layers."""
        return self.lazy("soundstorm", self._load_soundstorm)

    def _load_soundstorm(self) -> SoundStorm:
        import torch

        from anygpt_speech.soundstorm import SoundStorm

        config = self._soundstorm_config()
        acoustic_layers = self.tokenizer_config.n_q - 1
        if config.codebook_size != self.tokenizer_config.codebook_size:
            raise ConfigError(
                f"SoundStorm has {config.codebook_size} codes per layer but the SpeechTokenizer "
                f"{self.tokenizer_config.codebook_size}; check --soundstorm-config"
            )
        if config.num_quantizers != acoustic_layers:
            raise ConfigError(
                f"SoundStorm predicts {config.num_quantizers} acoustic layers but the "
                f"SpeechTokenizer has {acoustic_layers} (n_q {self.tokenizer_config.n_q}); "
                "check --soundstorm-config"
            )
        path = resolve_checkpoint(
            self.options.soundstorm_path,
            flag="--soundstorm-path",
            filename=SOUNDSTORM_FILE,
        )
        started = time.perf_counter()
        state = read_state_dict(path)
        with torch.device("meta"):
            model = SoundStorm(config)
        check_state_dict(
            state,
            model.state_dict(),
            source=path,
            what="the SoundStorm model",
            hint=_soundstorm_hint(state, self.options.soundstorm_config),
        )
        model.load_state_dict(state, strict=True, assign=True)
        model = model.to(device=self.device, dtype=torch.float32).eval()
        logger.info("SoundStorm %s loaded in %.1f s", path, time.perf_counter() - started)
        return model

    def _soundstorm_config(self) -> SoundStormConfig:
        from anygpt_speech.soundstorm import SoundStormConfig

        given = self.options.soundstorm_config
        if not given:
            return SoundStormConfig()
        data = load_json(given.expanduser(), flag="--soundstorm-config")
        try:
            return SoundStormConfig.model_validate(data)
        except ValidationError as err:
            raise ConfigError(
                f"--soundstorm-config {given}: {format_validation_error(err)}"
            ) from err

    # -- Codec protocol --------------------------------------------------------------------------

    def encode(self, source: Path | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Semantic codes of speech.

        Args:
            source: an audio file (any rate and channel count; mixed to mono by averaging) or a
                float array [T] / [T, C] / [C, T] already at `sample_rate`.

        Returns:
            codes: int64 [1, frames], RVQ layer 0, 50 per second.

        Raises:
            InputError: missing, empty, corrupt, non-audio, too short or longer than
                `--speech-max-seconds`.
        """
        from anygpt_speech.tokenizer import encode_all_layers

        wav = self._read(source, self.options.speech_max_seconds, what="speech input")
        return encode_all_layers(self.tokenizer, wav, layers=1).cpu()

    def decode(
        self,
        codes: torch.Tensor,
        *,
        condition: Path | None = None,
        seed: int | None = None,
        config: DecodingConfig | None = None,
    ) -> torch.Tensor:
        """Speech from semantic codes, in the voice of `condition` when given.

        Args:
            codes: int64 [1, frames] (or [frames]) semantic codes.
            condition: a voice prompt; its first `--voice-prompt-seconds` give the voice.
            seed: seeds SoundStorm's sampling; None draws from torch's global generator.
            config: the speech decoding config; its `vc_steps` sets SoundStorm's steps unless
                `--soundstorm-steps` is given.

        Returns:
            waveform: float32 [frames * 320] at `sample_rate`.
        """
        from anygpt_speech.tokenizer import decode_codes

        steps = getattr(config, "vc_steps", None)  # the speech plugin's SpeechDecodingConfig
        layers = self.all_layers(codes, condition=condition, seed=seed, steps=steps)
        return decode_codes(self.tokenizer, layers)

    def all_layers(
        self,
        codes: torch.Tensor,
        *,
        condition: Path | None = None,
        seed: int | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """All RVQ codes for semantic codes: SoundStorm's acoustic layers under the semantic layer.

        Args: as `decode`.

        Returns:
            codes: int64 [n_q, frames]; row 0 is `codes`, rows 1.. are predicted.

        Raises:
            InputError: a bad voice prompt file.
            GenerationError: codes of the wrong shape or range (`protocol.check_codes`).
        """
        semantic = _check_codes(codes, self.tokenizer_config.codebook_size)
        steps = self.options.soundstorm_steps or steps or DEFAULT_VC_STEPS  # the flag wins
        prompt = self._voice_prompt(condition)
        soundstorm = self.soundstorm
        generator = self._generator(seed)
        return self._predict(soundstorm, semantic, prompt=prompt, steps=steps, generator=generator)

    def decode_stream(
        self,
        codes: torch.Tensor | Iterable[torch.Tensor | int],
        *,
        condition: Path | None = None,
        seed: int | None = None,
        config: DecodingConfig | None = None,
        window: int = DEFAULT_WINDOW,
        context: int = DEFAULT_CONTEXT,
        overlap: int = DEFAULT_OVERLAP,
    ) -> Iterator[torch.Tensor]:
        """Speech from semantic codes in chunks, the first before the last code has arrived.

        SoundStorm runs over each `window` new frames with the `context` frames before them as
        its prompt, after the voice prompt, which applies to every window; SpeechTokenizer's
        decoder runs over the window with `context` frames on its left and holds back `overlap`
        frames at each seam for the next decode (see `anygpt_speech.streaming`).

        The defaults were measured against whole-span decoding (benchmarks/bench_stream_codec.py,
        docs/streaming.md). Overlap 4: the decoder looks 3 frames ahead; with 4 its seams are
        exact (SNR 128 dB, float precision; 2 frames: 43 dB). Context 50: the decoder's LSTM
        needs 25 to be exact (10: 76 dB, 0: 22 dB), and SoundStorm's context is what carries a
        sampled voice from window to window when no voice prompt is given, which random test
        weights cannot measure, so twice that, 1 s, for 1.9x SoundStorm's work. Window 50: the
        first audio waits for 50 codes (1 s of speech, 10 % of a 10 s answer); 25 costs 1.5x
        the work of 50 and twice the seams, 100 doubles the wait.

        A weight load, a bad voice prompt, bad options or window sizes raise here; codes from an
        iterable are checked as they arrive, so a bad one raises from the iteration.

        Args:
            codes: int64 [1, frames] or [frames] semantic codes, or an iterable of the new codes
                as they are generated: ints, or int64 [n] / [1, n] tensors.
            condition: as `decode`.
            seed: as `decode`; the same seed and window sizes give the same chunks.
            config: as `decode`.
            window: semantic frames per SoundStorm window (50 per second).
            context: frames left of a window that SoundStorm and the decoder see again.
            overlap: frames cross-faded at each seam (fewer than `window`).

        Returns:
            An iterator of waveform chunks float32 [n] at `sample_rate`; together they are
            float32 [frames * 320], and with `window` >= frames exactly `decode`'s waveform.

        Raises:
            ConfigError: window sizes out of range, or bad options.
            InputError: a bad voice prompt file.
            GenerationError: codes of the wrong shape or range, as `decode` (from the iteration
                for an iterable).
        """
        from anygpt_speech.tokenizer import decode_codes

        check_stream_sizes(window=window, context=context, overlap=overlap)
        steps = getattr(config, "vc_steps", None)  # the speech plugin's SpeechDecodingConfig
        blocks = self.all_layers_stream(
            codes, condition=condition, seed=seed, steps=steps, window=window, context=context
        )
        tokenizer = self.tokenizer
        stitcher = WaveStitcher(
            lambda layers: decode_codes(tokenizer, layers),
            hop=self.tokenizer_config.hop_length,
            context=context,
            overlap=overlap,
        )
        return stitch(blocks, stitcher)

    def all_layers_stream(
        self,
        codes: torch.Tensor | Iterable[torch.Tensor | int],
        *,
        condition: Path | None = None,
        seed: int | None = None,
        steps: int | None = None,
        window: int = DEFAULT_WINDOW,
        context: int = DEFAULT_CONTEXT,
    ) -> Iterator[torch.Tensor]:
        """All RVQ codes window by window, as `decode_stream` predicts them.

        Args: as `decode_stream`; `steps` as `all_layers`.

        Returns:
            An iterator of int64 [n_q, window] codes (the last window may be shorter); row 0 is
            the semantic codes. With `window` >= frames, one block equal to `all_layers`'s.

        Raises: as `decode_stream`.
        """
        check_stream_sizes(window=window, context=context)
        pieces = self._code_pieces(codes)
        steps = self.options.soundstorm_steps or steps or DEFAULT_VC_STEPS  # the flag wins
        prompt = self._voice_prompt(condition)
        soundstorm = self.soundstorm
        generator = self._generator(seed)
        return predict_windows(
            lambda semantic, given: self._predict(
                soundstorm, semantic, prompt=given, steps=steps, generator=generator
            ),
            pieces,
            prompt,
            window=window,
            context=context,
        )

    def _code_pieces(
        self, codes: torch.Tensor | Iterable[torch.Tensor | int]
    ) -> Iterable[torch.Tensor]:
        """Semantic codes int64 [n] checked as `decode` checks them: a tensor now, else lazily."""
        import torch

        size = self.tokenizer_config.codebook_size
        if isinstance(codes, torch.Tensor):
            return [_check_codes(codes, size)]

        def checked() -> Iterator[torch.Tensor]:
            frames = 0
            for piece in codes:
                given = torch.as_tensor(piece)
                semantic = _check_codes(given[None] if given.ndim == 0 else given, size, empty=True)
                frames += semantic.numel()
                yield semantic
            if not frames:
                _check_codes(torch.zeros(1, 0, dtype=torch.long), size)  # "no codes to decode"

        return checked()

    def _voice_prompt(self, condition: Path | None) -> torch.Tensor | None:
        """All RVQ codes int64 (1, P, n_q) of a voice prompt's first `--voice-prompt-seconds`."""
        from anygpt_speech.tokenizer import encode_all_layers

        if condition is None:
            return None
        seconds = self.options.voice_prompt_seconds
        voice = self._read(Path(condition), seconds, what="voice prompt", clip=True)
        return encode_all_layers(self.tokenizer, voice).T[None]  # (1, P, n_q)

    def _generator(self, seed: int | None) -> torch.Generator | None:
        import torch

        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def _predict(
        self,
        soundstorm: SoundStorm,
        semantic: torch.Tensor,
        *,
        prompt: torch.Tensor | None,
        steps: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """All RVQ codes int64 [n_q, frames] of semantic codes int64 [frames] (SoundStorm)."""
        import torch

        started = time.perf_counter()
        semantic = semantic[None].to(self.device)  # (1, frames)
        if prompt is not None:
            prompt = prompt.to(self.device)  # a window's context frames come from the CPU
        acoustic = soundstorm.generate(semantic, prompt=prompt, steps=steps, generator=generator)
        logger.info(
            "SoundStorm: %d frames in %.2f s (%d passes)",
            semantic.shape[1],
            time.perf_counter() - started,
            soundstorm.forward_passes(steps),
        )
        return torch.cat([semantic, acoustic[0].T], dim=0).cpu()  # (n_q, frames)

    def save(
        self, media: torch.Tensor, target: Path | BinaryIO, *, suffix: str | None = None
    ) -> None:
        """Write a waveform from `decode` as 16-bit .wav or .flac at `sample_rate`.

        Raises:
            InputError: another suffix, or a file object without `suffix`.
        """
        write_wav(media, target, self.sample_rate, suffix=suffix)

    # -- helpers ---------------------------------------------------------------------------------

    def _read(
        self,
        source: Path | np.ndarray | torch.Tensor,
        max_seconds: float,
        *,
        what: str,
        clip: bool = False,
    ) -> torch.Tensor:
        """A mono float32 [T] waveform at `sample_rate`, at least one code frame long."""
        import torch

        rate, hop = self.sample_rate, self.tokenizer_config.hop_length
        if isinstance(source, (str, Path)):
            name = str(source)
            wav = load_audio(source, rate, max_seconds=max_seconds, clip=clip)
        else:
            name = f"{what} array"
            wav = to_mono_tensor(source, rate, rate)
            if wav.numel() > max_seconds * rate:
                seconds = wav.numel() / rate
                raise InputError(
                    f"{name}: {seconds:.1f} s is longer than the {max_seconds:g} s limit"
                )
        if not bool(torch.isfinite(wav).all()):
            raise InputError(f"{name}: audio holds NaN or infinite samples")
        if wav.numel() < hop:
            raise InputError(
                f"{name}: {wav.numel()} samples is shorter than one "
                f"{1000 * hop / rate:g} ms code frame"
            )
        return wav


def _check_codes(codes: torch.Tensor, codebook_size: int, *, empty: bool = False) -> torch.Tensor:
    """Semantic codes int64 [frames] from [1, frames] or [frames] (see `protocol.check_codes`)."""
    checked = check_codes(
        codes, name="speech", num_codebooks=1, codebook_size=codebook_size, allow_empty=empty
    )
    return checked[0].cpu()


def _soundstorm_hint(state: Mapping[str, Any], given: Path | None) -> str:
    if any(".conv.net." in key for key in state):
        return (
            "its conv.net.* keys are upstream soundstorm-pytorch names; AnyGPT's layout "
            "(conv.net1, "
            "conv.ds_conv, conv.net2) is needed"
        )
    described = f"--soundstorm-config {given}" if given else "the published architecture (default)"
    return f"does {described} describe this checkpoint?"
