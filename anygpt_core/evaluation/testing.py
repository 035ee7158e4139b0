"""Tiny random-weight scorer checkpoints for tests, in the published layout of each scorer.

`write_tiny_scorers` writes one folder per scorer kind with `save_pretrained`: config, seeded
safetensors weights and the processor files (tokenizer, feature extractor, image processor, and for
Whisper the generation config its `generate` reads), so `Scorers({kind: folder})` loads them exactly
as it loads the published checkpoints. Nothing is downloaded: the byte-level BPE vocabularies are the
256 byte characters plus each tokenizer's special tokens, without merges. Scores are meaningless.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_tiny_scorers"]

_SEED = 0
_WIDTH = 32


def write_tiny_scorers(directory: Path) -> dict[str, str]:
    """Write a tiny seeded checkpoint per scorer kind under `directory/KIND`.

    The same files come out on every call (seeded weights, fixed vocabularies).

    Args:
        directory: the parent folder (created if missing).

    Returns:
        Scorer kind (`whisper`, `wavlm-sv`, `clip`, `clap`) -> its checkpoint folder.
    """
    import torch

    writers: dict[str, Callable[[Path], None]] = {
        "whisper": _write_whisper,
        "wavlm-sv": _write_wavlm,
        "clip": _write_clip,
        "clap": _write_clap,
    }
    folders = {}
    for kind, write in writers.items():
        folder = Path(directory) / kind
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(_SEED)
        write(folder)
        folders[kind] = str(folder)
    return folders


def _byte_alphabet() -> list[str]:
    """The 256 characters a byte-level pre-tokenizer maps bytes to, in a fixed order."""
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def _save(model: Any, folder: Path, *processors: Any) -> None:  # noqa: ANN401
    """Save a freshly built model in eval mode and its processor parts into `folder`."""
    model.eval()
    model.save_pretrained(folder)
    for processor in processors:
        processor.save_pretrained(folder)


def _write_whisper(folder: Path) -> None:
    """Whisper: the multilingual layout (`<|en|>`, `<|transcribe|>`, timestamps); 8 tokens per window."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    vocab = {char: index for index, char in enumerate(_byte_alphabet())}
    languages = [f"<|{code}|>" for code in LANGUAGES]
    tasks = ["<|translate|>", "<|transcribe|>"]
    controls = ["<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    # the published order: text, <|endoftext|>, <|startoftranscript|>, languages, tasks, controls
    specials = ["<|endoftext|>", "<|startoftranscript|>", *languages, *tasks, *controls]
    for token in [*specials, *timestamps]:
        vocab[token] = len(vocab)
    tokenizer = WhisperTokenizer(
        vocab=vocab, merges=[], extra_special_tokens=specials[1:], model_max_length=448
    )
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(vocab),
        num_mel_bins=80,
        d_model=_WIDTH,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * _WIDTH,
        decoder_ffn_dim=2 * _WIDTH,
        max_source_positions=1500,  # 30 s of 10 ms frames after the stride-2 convolution
        max_target_positions=64,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=[vocab["Ġ"], eot],
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        max_length=12,
        begin_suppress_tokens=[vocab["Ġ"], eot],
        # random weights: only text and <|endoftext|> may come out (the published model learnt it)
        suppress_tokens=[vocab[token] for token in [*specials[1:], *timestamps]],
        is_multilingual=True,
        lang_to_id={token: vocab[token] for token in languages},
        task_to_id={"translate": vocab["<|translate|>"], "transcribe": vocab["<|transcribe|>"]},
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        prev_sot_token_id=vocab["<|startofprev|>"],
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer)
    _save(model, folder, processor)


def _write_wavlm(folder: Path) -> None:
    """WavLM x-vector: a 3-layer convolution front end (stride 80), 2 transformer layers, 2 TDNN."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    config = WavLMConfig(
        hidden_size=_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * _WIDTH,
        conv_dim=(_WIDTH, _WIDTH, _WIDTH),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_buckets=32,
        max_bucket_distance=64,
        use_weighted_layer_sum=True,
        tdnn_dim=(_WIDTH, _WIDTH),
        tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1),
        xvector_output_dim=_WIDTH,
    )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=False,
        return_attention_mask=True,
    )
    _save(WavLMForXVector(config), folder, extractor)


def _write_clip(folder: Path) -> None:
    """CLIP: 32-pixel images in 8-pixel patches, a 77-token text tower, both 2 layers wide 32."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    alphabet = _byte_alphabet()
    tokens = [*alphabet, *(f"{char}</w>" for char in alphabet), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tower = {
        "hidden_size": _WIDTH,
        "intermediate_size": 2 * _WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=_WIDTH,
    )
    images = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    _save(CLIPModel(config), folder, CLIPProcessor(image_processor=images, tokenizer=tokenizer))


def _write_clap(folder: Path) -> None:
    """CLAP: HTSAT with two 1-block stages over the 64-bin mel image, a 2-layer RoBERTa text tower."""
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        RobertaTokenizer,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {token: index for index, token in enumerate([*specials, *_byte_alphabet()])}
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=64)
    config = ClapConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": _WIDTH,
            "intermediate_size": 2 * _WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64 + 2,  # RoBERTa positions start after the padding id
            "type_vocab_size": 1,
            "pad_token_id": vocab["<pad>"],
            "bos_token_id": vocab["<s>"],
            "eos_token_id": vocab["</s>"],
            "projection_dim": _WIDTH,
        },
        audio_config={
            "spec_size": 256,
            "num_mel_bins": 64,
            "patch_embeds_hidden_size": _WIDTH,
            "hidden_size": 2 * _WIDTH,
            "depths": [1, 1],
            "num_attention_heads": [2, 2],
            "num_hidden_layers": 2,
            "window_size": 8,
            "projection_dim": _WIDTH,
            "enable_fusion": False,
        },
        projection_dim=_WIDTH,
    )
    extractor = ClapFeatureExtractor(
        feature_size=64,
        sampling_rate=48000,
        hop_length=480,
        max_length_s=10,
        fft_window_size=1024,
        frequency_min=50,
        frequency_max=14000,
        truncation="rand_trunc",
        padding="repeatpad",
    )
    _save(
        ClapModel(config), folder, ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    )
