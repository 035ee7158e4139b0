"""The scorer models of the paper's evaluation, loaded through transformers on first use.

| kind | default checkpoint | scores |
|---|---|---|
| `whisper` | `openai/whisper-medium` | English transcripts (greedy) for WER |
| `wavlm-sv` | `microsoft/wavlm-base-plus-sv` | speaker similarity: cosine of x-vectors (SIM) |
| `clip` | `openai/clip-vit-large-patch14` | CLIP score: cosine of image and text embeddings |
| `clap` | `laion/larger_clap_music` | CLAP score: cosine of music and text embeddings |

The paper (arXiv 2402.12226) does not state its CLAP checkpoint: `laion/larger_clap_music`, LAION's
CLAP trained with music, is our choice; `--scorer clap=...` picks another.

Each kind is a local folder or a hub id (`owner/name[@revision]`) found in the local Hugging Face
cache, downloaded unless `HF_HUB_OFFLINE` is set (`anygpt_core.checkpoints.resolve_checkpoint`).
Scores are raw cosines in [-1, 1] (not torchmetrics' CLIP score, which is 100 times the cosine
clipped at 0), computed in batches under `torch.inference_mode`. Batching leaves each score as it
would be alone: inputs are padded only where the model masks or ignores the padding (speaker
embeddings batch only waves of one length).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from anygpt_core.checkpoints import resolve_checkpoint, split_revision
from anygpt_core.errors import CheckpointError, ConfigError, InputError, first_line

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

__all__ = ["SCORER_KINDS", "Scorers"]

logger = logging.getLogger(__name__)

#: Scorer kind -> its default checkpoint: the paper's, or for CLAP (unstated there) ours.
SCORER_KINDS: dict[str, str] = {
    "whisper": "openai/whisper-medium",
    "wavlm-sv": "microsoft/wavlm-base-plus-sv",
    "clip": "openai/clip-vit-large-patch14",
    "clap": "laion/larger_clap_music",
}

#: Files fetched from the hub: configs, tokenizer and processor files, safetensors weights.
_FILES = ("*.json", "*.txt", "*.safetensors")
#: Weights fetched only where a repository has no safetensors (LAION's CLAP ones have none).
_PICKLED = ("pytorch_model*.bin",)

_T = TypeVar("_T")


class Scorers:
    """The scorer models, each loaded from its source on first use and kept.

    Args:
        sources: scorer kind -> local folder or hub id, replacing that kind's default
            (`SCORER_KINDS`).
        device: where the models run (`cpu`, `cuda`, `cuda:1`).
        batch_size: inputs per forward pass.

    Raises:
        ConfigError: an unknown kind, an empty source or a batch size below 1.
    """

    def __init__(
        self,
        sources: Mapping[str, str] | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        given = dict(sources or {})
        for kind, value in given.items():
            _check_kind(kind)
            if not str(value).strip():
                raise ConfigError(f"--scorer {kind}: empty path or hub id")
        if batch_size < 1:
            raise ConfigError(f"scorer batch size {batch_size}: must be at least 1")
        self._sources = {**SCORER_KINDS, **given}
        self.device = device
        self.batch_size = batch_size
        self._folders: dict[str, Path] = {}
        self._models: dict[str, tuple[Any, Any]] = {}

    def source(self, kind: str) -> str:
        """The local folder or hub id `kind` loads from.

        Raises:
            ConfigError: an unknown kind.
        """
        _check_kind(kind)
        return self._sources[kind]

    def check(self, kinds: Iterable[str]) -> None:
        """Find each kind's checkpoint now, without loading it, so a run fails before generating.

        Raises:
            ConfigError: an unknown kind (before any checkpoint is looked for).
            CheckpointError: a missing folder, a folder without weights, or a hub id neither
                cached nor downloadable (offline: one line naming the `hf download` command).
        """
        wanted = list(kinds)
        for kind in wanted:
            _check_kind(kind)
        for kind in wanted:
            self._folder(kind)

    def versions(self) -> dict[str, str]:
        """Kind -> source of each scorer loaded so far, for the report."""
        return {kind: self._sources[kind] for kind in self._models}

    def transcribe(self, waves: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        """English transcripts by Whisper, greedy, one per wave.

        Audio longer than Whisper's 30 s window is transcribed whole, window after window
        (transformers' long-form decoding, with timestamps).

        Args:
            waves: float32 [T] (or [T, channels], averaged) at `sample_rate`.
            sample_rate: rate of `waves`; resampled to the processor's 16 kHz.

        Returns:
            The transcripts, stripped of surrounding spaces, without normalisation.

        Raises:
            InputError: a wave without samples or of more than two dimensions.
        """
        import torch

        if not waves:
            return []
        model, processor = self._load("whisper")
        extractor = processor.feature_extractor
        rate = extractor.sampling_rate
        arrays = _resample(waves, sample_rate, rate)
        texts: list[str] = []
        with torch.inference_mode():
            for batch in _chunks(arrays, self.batch_size):
                options: dict[str, Any] = {}
                if max(len(wave) for wave in batch) > extractor.n_samples:
                    inputs = extractor(
                        batch,
                        sampling_rate=rate,
                        truncation=False,
                        padding="longest",
                        return_attention_mask=True,
                        return_tensors="pt",
                    )
                    options = {
                        "attention_mask": inputs.attention_mask.to(self.device),
                        "return_timestamps": True,
                    }
                else:
                    inputs = extractor(batch, sampling_rate=rate, return_tensors="pt")
                features = inputs.input_features.to(self.device, model.dtype)
                ids = model.generate(
                    features,
                    language="en",
                    task="transcribe",
                    do_sample=False,
                    num_beams=1,
                    **options,
                )
                decoded = processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
                texts.extend(text.strip() for text in decoded)
        return texts

    def speaker_embeddings(self, waves: Sequence[np.ndarray], sample_rate: int) -> torch.Tensor:
        """WavLM x-vectors, as UniAudio's `compute_similarity_vc.py` computes them.

        Waves of equal length share a forward pass; others run apart, because padding changes
        the group-normalised features of the convolutional front end.

        Args:
            waves: float32 [T] (or [T, channels], averaged) at `sample_rate`.
            sample_rate: rate of `waves`; resampled to the feature extractor's 16 kHz.

        Returns:
            float32 [N, D] on the CPU, unnormalised (compare with cosine similarity).

        Raises:
            InputError: a wave without samples, or shorter than the model's receptive field
                (0.3 s for `microsoft/wavlm-base-plus-sv`).
        """
        import torch

        model, extractor = self._load("wavlm-sv")
        rate = extractor.sampling_rate
        arrays = _resample(waves, sample_rate, rate)
        shortest = _shortest_xvector_input(model.config)
        for index, wave in enumerate(arrays):
            if len(wave) < shortest:
                raise InputError(
                    f"wave {index}: {len(wave) / rate:.2f} s is shorter than the "
                    f"{shortest / rate:.2f} s the wavlm-sv speaker model needs"
                )
        by_length: dict[int, list[int]] = {}
        for index, wave in enumerate(arrays):
            by_length.setdefault(len(wave), []).append(index)
        rows: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for indices in by_length.values():
                for chunk in _chunks(indices, self.batch_size):
                    inputs = extractor(
                        [arrays[i] for i in chunk],
                        sampling_rate=rate,
                        return_attention_mask=False,  # equal lengths: nothing to mask
                        return_tensors="pt",
                    ).to(self.device)
                    embeddings = model(**inputs).embeddings.float().cpu()
                    rows.update(zip(chunk, embeddings, strict=True))
        if not rows:
            return torch.empty(0, model.config.xvector_output_dim)
        return torch.stack([rows[index] for index in range(len(arrays))])

    def speaker_similarity(
        self, a: Sequence[np.ndarray], b: Sequence[np.ndarray], sample_rate: int
    ) -> list[float]:
        """SIM: cosine of the WavLM x-vectors of `a[i]` and `b[i]`, per pair.

        Raises:
            ValueError: `a` and `b` differ in length.
            InputError: see `speaker_embeddings`.
        """
        _check_pairs(a, b)
        if not a:
            return []
        embeddings = self.speaker_embeddings([*a, *b], sample_rate)
        return _cosines(embeddings[: len(a)], embeddings[len(a) :])

    def clip_text_image(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """CLIP score: cosine of the CLIP embeddings of `images[i]` and `texts[i]`, per pair.

        Texts longer than CLIP's 77 tokens are truncated, as the CLIP score always did.

        Raises:
            ValueError: `images` and `texts` differ in length.
        """
        _check_pairs(images, texts)
        if not images:
            return []
        return _cosines(self._clip_images(images), self._clip_texts(texts))

    def clip_image_image(self, a: Sequence[Image.Image], b: Sequence[Image.Image]) -> list[float]:
        """Cosine of the CLIP image embeddings of `a[i]` and `b[i]`, per pair.

        Raises:
            ValueError: `a` and `b` differ in length.
        """
        _check_pairs(a, b)
        if not a:
            return []
        embeddings = self._clip_images([*a, *b])
        return _cosines(embeddings[: len(a)], embeddings[len(a) :])

    def clap_audio_text(
        self, waves: Sequence[np.ndarray], sample_rate: int, texts: Sequence[str]
    ) -> list[float]:
        """CLAP score: cosine of the CLAP embeddings of `waves[i]` and `texts[i]`, per pair.

        The first 10 s of each wave are scored (the processor's `max_length_s`); shorter waves are
        repeated to fill them (its `repeatpad`). Taking the start instead of the processor's random
        crop keeps the score reproducible.

        Args:
            waves: float32 [T] (or [T, channels], averaged) at `sample_rate`.
            sample_rate: rate of `waves`; resampled to the processor's 48 kHz.
            texts: the captions, truncated to the text model's length.

        Raises:
            ValueError: `waves` and `texts` differ in length.
            InputError: a wave without samples or of more than two dimensions.
        """
        import torch

        _check_pairs(waves, texts)
        if not waves:
            return []
        model, processor = self._load("clap")
        extractor = processor.feature_extractor
        rate = extractor.sampling_rate
        arrays = [wave[: extractor.nb_max_samples] for wave in _resample(waves, sample_rate, rate)]
        audio, text = [], []
        with torch.inference_mode():
            for batch in _chunks(arrays, self.batch_size):
                inputs = extractor(
                    batch,
                    sampling_rate=rate,
                    truncation="rand_trunc",  # deterministic here: no wave is longer
                    padding="repeatpad",
                    return_tensors="pt",
                ).to(self.device)
                audio.append(model.get_audio_features(**inputs).pooler_output.float().cpu())
            for chunk in _chunks(list(texts), self.batch_size):
                tokens = processor.tokenizer(
                    chunk, padding=True, truncation=True, return_tensors="pt"
                ).to(self.device)
                text.append(model.get_text_features(**tokens).pooler_output.float().cpu())
        return _cosines(torch.cat(audio), torch.cat(text))

    def _clip_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """float32 [N, D] CLIP image embeddings on the CPU."""
        import torch

        model, processor = self._load("clip")
        out = []
        with torch.inference_mode():
            for batch in _chunks(list(images), self.batch_size):
                pixels = processor.image_processor(
                    images=[image.convert("RGB") for image in batch], return_tensors="pt"
                ).pixel_values.to(self.device, model.dtype)
                out.append(
                    model.get_image_features(pixel_values=pixels).pooler_output.float().cpu()
                )
        return torch.cat(out)

    def _clip_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """float32 [N, D] CLIP text embeddings on the CPU."""
        import torch

        model, processor = self._load("clip")
        out = []
        with torch.inference_mode():
            for batch in _chunks(list(texts), self.batch_size):
                tokens = processor.tokenizer(
                    batch, padding=True, truncation=True, return_tensors="pt"
                ).to(self.device)
                out.append(model.get_text_features(**tokens).pooler_output.float().cpu())
        return torch.cat(out)

    def _folder(self, kind: str) -> Path:
        """The local folder of `kind`'s checkpoint, fetched from the hub if need be (once)."""
        value = self.source(kind)
        if kind in self._folders:
            return self._folders[kind]
        flag = f"--scorer {kind}"
        folder = resolve_checkpoint(value, flag=flag, allow_patterns=_FILES)
        local = Path(value).expanduser().exists()
        if not local and not any(folder.glob("*.safetensors")):
            folder = resolve_checkpoint(value, flag=flag, allow_patterns=(*_FILES, *_PICKLED))
        if not folder.is_dir():
            raise CheckpointError(f"{flag} {value}: a checkpoint folder is needed, not a file")
        if not any(folder.glob("*.safetensors")) and not any(folder.glob(_PICKLED[0])):
            missing = f"{flag} {value}: no weights (*.safetensors or pytorch_model.bin)"
            if local:
                raise CheckpointError(f"{missing} in this folder")
            repo_id, revision = split_revision(value)
            command = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
            raise CheckpointError(f"{missing} in its cached snapshot {folder}; run `{command}`")
        self._folders[kind] = folder
        return folder

    def _load(self, kind: str) -> tuple[Any, Any]:
        """`kind`'s model (eval mode, on the device) and processor, loaded on first use."""
        if kind not in self._models:
            folder = self._folder(kind)
            try:
                model, processor = _LOADERS[kind](folder)
                model = model.to(self.device).eval()
            except Exception as err:  # transformers raises OSError, ValueError, KeyError, ...
                raise CheckpointError(
                    f"{folder}: not a loadable {kind} checkpoint ({first_line(err)})"
                ) from err
            logger.info("loaded the %s scorer from %s on %s", kind, folder, self.device)
            self._models[kind] = (model, processor)
        return self._models[kind]


def _check_kind(kind: str) -> None:
    if kind not in SCORER_KINDS:
        raise ConfigError(f"--scorer {kind}: unknown scorer kind; kinds: {', '.join(SCORER_KINDS)}")


def _check_pairs(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"scores are per pair: {len(a)} items against {len(b)}")


def _chunks(items: Sequence[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Cosine of row i of `a` [N, D] and row i of `b` [N, D], clamped to [-1, 1]."""
    import torch

    values = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    return [float(value) for value in values.clamp(-1.0, 1.0)]


def _resample(waves: Sequence[np.ndarray], sample_rate: int, rate: int) -> list[np.ndarray]:
    """Mono float32 [T] numpy arrays at `rate` (torchaudio's resampling)."""
    from anygpt_core.audio import to_mono_tensor

    arrays = []
    for index, wave in enumerate(waves):
        if wave.size == 0:
            raise InputError(f"wave {index}: no samples")
        arrays.append(to_mono_tensor(wave, sample_rate, rate).numpy())
    return arrays


def _shortest_xvector_input(config: Any) -> int:  # noqa: ANN401
    """The fewest samples a WavLM x-vector model takes: its convolutions and TDNN need a frame."""
    frames = 1 + sum(
        (k - 1) * d for k, d in zip(config.tdnn_kernel, config.tdnn_dilation, strict=True)
    )
    samples = frames
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride, strict=True))):
        samples = (samples - 1) * stride + kernel
    return samples


def _load_whisper(folder: Path) -> tuple[Any, Any]:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    return (
        WhisperForConditionalGeneration.from_pretrained(folder),
        WhisperProcessor.from_pretrained(folder),
    )


def _load_wavlm(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoFeatureExtractor, WavLMForXVector

    return WavLMForXVector.from_pretrained(folder), AutoFeatureExtractor.from_pretrained(folder)


def _load_clip(folder: Path) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor

    # PIL's bicubic resize, as OpenAI's CLIP; torchvision's would change scores with its presence
    return CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder, backend="pil")


def _load_clap(folder: Path) -> tuple[Any, Any]:
    from transformers import ClapModel, ClapProcessor

    return ClapModel.from_pretrained(folder), ClapProcessor.from_pretrained(folder)


_LOADERS = {
    "whisper": _load_whisper,
    "wavlm-sv": _load_wavlm,
    "clip": _load_clip,
    "clap": _load_clap,
}
