"""Streamed speech decoding (`SpeechCodec.decode_stream`) against whole-span decoding, same codes.

Codec: the embedded demo's tiny speech codec (`anygpt_speech.demo`: SpeechTokenizer and SoundStorm
at test size, random seeded weights). A random decoder's output is mostly its biases: codes with
random acoustic layers decode within about 70 dB of the true ones, so an SNR would measure
nothing. The benchmark zeroes the decoder's biases; the `decoder sensitivity` line gives the SNR
of random acoustic codes with and without them, the scale of the SNR columns.
Codes: `--seconds` of a synthetic voiced signal, encoded by the same tokenizer; `--voice-seconds`
of another one as the voice prompt (0: none).

Table 1, one row per (window, context), overlap `--overlap`, seed 0:

- agree: fraction of acoustic codes (RVQ layers 1..7) equal in streamed and whole decoding at
  vc_steps 3. Windows draw SoundStorm's noise in other shapes, so sampling alone changes codes;
  the `floor` line gives two whole decodings with different seeds.
- greedy: the same at 1 step, where SoundStorm samples nothing: what the windows alone change.
- SNR: the streamed waveform against the whole one (dB); `floor` as for agree.
- work: frames SoundStorm runs over (voice prompt + context + window, per window) over the whole
  decode's (voice prompt + span): its compute, as a ratio that does not depend on the machine.
- first / all: seconds to the first chunk and to the last, codes fed one frame at a time, all
  available at once (no model to wait for); the `floor` line gives `decode`'s time, same run.
  On a shared machine these vary from run to run; `work` does not.

Table 2, the decoder's seams alone: the whole span's own codes decoded window by window
(`WaveStitcher`, window `--seam-window`) against one decode, SNR in dB by context and overlap.

Usage: python benchmarks/bench_stream_codec.py [--seconds 10] [--voice-seconds 0]
       [--windows 25,50,100,200] [--contexts 0,25,50,100] [--overlap 4] [--seam-window 50]
       [--seam-contexts 0,5,10,25,50] [--seam-overlaps 0,2,4,8] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from anygpt_speech.codec import SpeechCodec
from anygpt_speech.demo import demo_options
from anygpt_speech.streaming import WaveStitcher, stitch
from anygpt_speech.tokenizer import decode_codes

logger = logging.getLogger("bench")


def voiced(seconds: float, rate: int, *, pitch: float = 140.0) -> np.ndarray:
    """A gliding voiced tone, amplitude-modulated like syllables, with noise: float32 [T]."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(pitch * (1 + 0.25 * np.sin(2 * np.pi * 0.7 * t))) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 5)) * np.sin(2 * np.pi * 2.5 * t) ** 2
    return (0.3 * wave + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def snr(reference: torch.Tensor, other: torch.Tensor) -> float:
    """10 log10 of the reference's energy over the difference's (inf when equal)."""
    noise = float((reference - other).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float(reference.pow(2).sum()) / noise)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of equal acoustic codes (rows 1..) of two int64 [n_q, frames] tensors."""
    return float((a[1:] == b[1:]).float().mean())


def one_by_one(codes: torch.Tensor) -> Iterator[torch.Tensor]:
    """Semantic codes int64 [1, frames] as the model makes them: one frame at a time."""
    yield from codes[0].split(1)


def work(frames: int, window: int, context: int, prompt: int) -> float:
    """SoundStorm's frames over all windows (prompt + context + window) over the whole decode's."""
    starts = range(0, frames, window)
    total = sum(prompt + min(context, s) + min(window, frames - s) for s in starts)
    return total / (prompt + frames)


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--voice-seconds", type=float, default=0.0)
    parser.add_argument("--windows", type=ints, default=[25, 50, 100, 200])
    parser.add_argument("--contexts", type=ints, default=[0, 25, 50, 100])
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--seam-window", type=int, default=50)
    parser.add_argument("--seam-contexts", type=ints, default=[0, 5, 10, 25, 50])
    parser.add_argument("--seam-overlaps", type=ints, default=[0, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (steadier timings)")
    parser.add_argument("--quick", action="store_true", help="2 s, window 25, contexts 0,25")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    if args.quick:
        args.seconds, args.windows, args.contexts = 2.0, [25], [0, 25]
        args.seam_window, args.seam_contexts, args.seam_overlaps = 25, [0, 25], [0, 4]
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        codec = SpeechCodec({**demo_options(Path(tmp)), "speech_device": "cpu"})
        rate, hop = codec.sample_rate, codec.tokenizer_config.hop_length
        codes = codec.encode(voiced(args.seconds, rate))  # (1, frames)
        frames = codes.shape[1]
        voice, prompt = None, 0
        if args.voice_seconds:
            voice = Path(tmp) / "voice.wav"
            sf.write(voice, voiced(args.voice_seconds, rate, pitch=210.0), rate)
            prompt = min(args.voice_seconds, codec.options.voice_prompt_seconds) * rate // hop
        layers = codec.all_layers(codes, condition=voice, seed=0)
        scrambled = layers.clone()
        scrambled[1:] = torch.randint(0, 1024, scrambled[1:].shape)
        with_biases = snr(
            decode_codes(codec.tokenizer, layers), decode_codes(codec.tokenizer, scrambled)
        )
        with torch.no_grad():
            for name, param in codec.tokenizer.decoder.named_parameters():
                if "bias" in name:
                    param.zero_()
        without = snr(
            decode_codes(codec.tokenizer, layers), decode_codes(codec.tokenizer, scrambled)
        )
        logger.info(
            "%d frames (%.1f s), voice prompt %g s, overlap %d; decoder sensitivity: random "
            "acoustic codes give SNR %.1f dB with the decoder's biases, %.1f dB without (used)",
            frames,
            frames * hop / rate,
            args.voice_seconds,
            args.overlap,
            with_biases,
            without,
        )

        started = time.perf_counter()
        whole = codec.decode(codes, condition=voice, seed=0)
        whole_s = time.perf_counter() - started
        greedy_whole = codec.all_layers(codes, condition=voice, seed=0, steps=1)
        logger.info(
            "floor (whole, seed 0 vs 1): agree %.3f, SNR %.1f dB; whole decode %.2f s",
            agreement(layers, codec.all_layers(codes, condition=voice, seed=1)),
            snr(whole, codec.decode(codes, condition=voice, seed=1)),
            whole_s,
        )
        header = ("window", "context", "agree", "greedy", "SNR dB", "work", "first s", "all s")
        logger.info("%6s %7s %6s %6s %7s %6s %7s %7s", *header)
        for window in [*(w for w in args.windows if w < frames), frames]:
            for context in args.contexts if window < frames else [0]:
                options = {"condition": voice, "seed": 0, "window": window, "context": context}
                overlap = min(args.overlap, window - 1)
                started = time.perf_counter()
                chunks = codec.decode_stream(one_by_one(codes), **options, overlap=overlap)
                first = next(chunks)
                first_s = time.perf_counter() - started
                streamed = torch.cat([first, *chunks])
                all_s = time.perf_counter() - started
                if streamed.shape != whole.shape:
                    raise SystemExit(f"window {window}: {streamed.shape} != {whole.shape}")
                got = torch.cat(list(codec.all_layers_stream(codes, **options)), dim=1)
                greedy = torch.cat(list(codec.all_layers_stream(codes, **options, steps=1)), 1)
                logger.info(
                    "%6s %7d %6.3f %6.3f %7.1f %6.2f %7.2f %7.2f",
                    window if window < frames else "whole",
                    context,
                    agreement(got, layers),
                    agreement(greedy, greedy_whole),
                    snr(whole, streamed),
                    work(frames, window, context, int(prompt)),
                    first_s,
                    all_s,
                )

        whole = decode_codes(codec.tokenizer, layers)
        logger.info(
            "decoder seams, window %d: SNR dB by context (rows) and overlap", args.seam_window
        )
        logger.info("%7s %s", "context", " ".join(f"{o:>7d}" for o in args.seam_overlaps))
        for context in args.seam_contexts:
            cells = []
            for overlap in args.seam_overlaps:
                stitcher = WaveStitcher(
                    lambda c: decode_codes(codec.tokenizer, c),
                    hop=hop,
                    context=context,
                    overlap=overlap,
                )
                blocks = layers.split(args.seam_window, dim=1)
                cells.append(snr(whole, torch.cat(list(stitch(blocks, stitcher)))))
            logger.info("%7d %s", context, " ".join(f"{c:7.1f}" for c in cells))


if __name__ == "__main__":
    main()
