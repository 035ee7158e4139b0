"""The speech codec: audio -> semantic codes (ASR input), semantic codes -> audio (TTS output).

Encoding keeps RVQ layer 0 of SpeechTokenizer (50 codes per second). Decoding lets SoundStorm
predict the 7 acoustic layers, in the voice of an optional prompt file, and SpeechTokenizer's
decoder turns all 8 layers into 16 kHz audio. Weights load on first use, torch only then.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import ValidationError

from anygpt_core.audio import load_audio, to_mono_tensor, write_wav
from anygpt_core.checkpoints import check_state_dict, read_state_dict, resolve_checkpoint
from anygpt_core.config import format_validation_error
from anygpt_core.errors import ConfigError, InputError
from anygpt_speech.checkpoints import (
    SOUNDSTORM_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    load_json,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from speechtokenizer import SpeechTokenizer

    from anygpt_core.config import DecodingConfig
    from anygpt_speech.soundstorm import SoundStorm, SoundStormConfig
    from anygpt_speech.tokenizer import SpeechTokenizerConfig

__all__ = ["SpeechCodec"]

logger = logging.getLogger(__name__)

#: SoundStorm steps the reference used (its generate_config.json `vc_steps`).
DEFAULT_VC_STEPS = 3


class SpeechCodec:
    """SpeechTokenizer + SoundStorm behind the `Codec` protocol.

    Args:
        options: the speech plugin's option values by name (see `anygpt_speech.plugin.SPEECH`). They
            are read on first use, so building the codec never fails and never touches a file.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    # -- options ---------------------------------------------------------------------------------

    def _number(self, name: str, kind: type[int] | type[float]) -> float:
        value: Any = self.options.get(name)
        flag = "--" + name.replace("_", "-")
        try:
            number = kind(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{flag} {value}: expected a positive number") from err
        if not math.isfinite(number) or number <= 0:  # nan and inf would switch a limit off
            raise ConfigError(f"{flag} {value}: expected a positive number")
        return number

    @cached_property
    def device(self) -> torch.device:
        """`--speech-device`: auto (cuda when available), cpu, cuda or cuda:N."""
        from anygpt_core.loading import pick_device

        device: torch.device = pick_device(
            str(self.options.get("speech_device") or "auto"), flag="--speech-device"
        )
        return device

    # -- weights ---------------------------------------------------------------------------------

    @cached_property
    def _tokenizer_files(self) -> tuple[Path, Path, dict[str, Any], SpeechTokenizerConfig]:
        from anygpt_speech.tokenizer import SpeechTokenizerConfig

        source = str(self.options.get("speech_tokenizer_path"))
        flag = "--speech-tokenizer-path"
        ckpt = resolve_checkpoint(source, flag=flag, filename=TOKENIZER_FILE)
        given = self.options.get("speech_tokenizer_config")
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

    @cached_property
    def tokenizer(self) -> SpeechTokenizer:
        """The SpeechTokenizer model, loaded on first use."""
        from anygpt_speech.tokenizer import load_speech_tokenizer

        ckpt, config_path, raw, _ = self._tokenizer_files
        started = time.perf_counter()
        model = load_speech_tokenizer(ckpt, config_path, raw).to(self.device)
        logger.info("SpeechTokenizer %s loaded in %.1f s", ckpt, time.perf_counter() - started)
        return model

    @cached_property
    def soundstorm(self) -> SoundStorm:
        """The SoundStorm model, loaded on first use and checked against the tokenizer's layers."""
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
            str(self.options.get("soundstorm_path")),
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
            hint=_soundstorm_hint(state, self.options),
        )
        model.load_state_dict(state, strict=True, assign=True)
        model = model.to(device=self.device, dtype=torch.float32).eval()
        logger.info("SoundStorm %s loaded in %.1f s", path, time.perf_counter() - started)
        return model

    def _soundstorm_config(self) -> SoundStormConfig:
        from anygpt_speech.soundstorm import SoundStormConfig

        given = self.options.get("soundstorm_config")
        if not given:
            return SoundStormConfig()
        data = load_json(Path(str(given)).expanduser(), flag="--soundstorm-config")
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

        wav = self._read(source, self._number("speech_max_seconds", float), what="speech input")
        return encode_all_layers(self.tokenizer, wav)[:1].cpu()

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
            InputError: codes of the wrong shape or range, or a bad voice prompt file.
        """
        import torch

        from anygpt_speech.tokenizer import encode_all_layers

        semantic = _check_codes(codes, self.tokenizer_config.codebook_size)
        if self.options.get("soundstorm_steps") is not None:  # the flag wins over the config
            steps = int(self._number("soundstorm_steps", int))
        steps = steps or DEFAULT_VC_STEPS
        prompt = None
        if condition is not None:
            seconds = self._number("voice_prompt_seconds", float)
            voice = self._read(Path(condition), seconds, what="voice prompt", clip=True)
            prompt = encode_all_layers(self.tokenizer, voice).T[None]  # (1, P, n_q)
        soundstorm = self.soundstorm
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        started = time.perf_counter()
        semantic = semantic[None].to(self.device)  # (1, frames)
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


def _check_codes(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Semantic codes int64 [frames] from [1, frames] or [frames], or an `InputError`."""
    import torch

    codes = torch.as_tensor(codes)
    if codes.ndim == 2 and codes.shape[0] == 1:
        codes = codes[0]
    if codes.ndim != 1 or codes.numel() == 0:
        raise InputError(f"speech codes: expected shape [1, frames], got {tuple(codes.shape)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise InputError(f"speech codes: expected integers, got {codes.dtype}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= codebook_size:
        raise InputError(
            f"speech codes: values must lie in [0, {codebook_size}), got [{low}, {high}]"
        )
    return codes.long().cpu()


def _soundstorm_hint(state: Mapping[str, Any], options: Mapping[str, Any]) -> str:
    if any(".conv.net." in key for key in state):
        return (
            "its conv.net.* keys are upstream soundstorm-pytorch names; AnyGPT's layout "
            "(conv.net1, "
            "conv.ds_conv, conv.net2) is needed"
        )
    given = options.get("soundstorm_config")
    described = f"--soundstorm-config {given}" if given else "the published architecture (default)"
    return f"does {described} describe this checkpoint?"
