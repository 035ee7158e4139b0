"""Real-time factor and peak memory of the music codec at the real `facebook/encodec_32khz` size.

Weights are random (timing does not depend on them); the checkpoint is written in the hub layout and
loaded through `MusicCodec`, exactly as a user's would be. Target: encode + decode of 10 s of audio in
under 0.5x real time on 2 CPU cores.

    python plugins/anygpt_music/benchmarks/bench_music_codec.py [--seconds 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from anygpt_music.music import MusicCodec
from anygpt_music.tiny import music_config, seeded_signal
from transformers import EncodecConfig, EncodecModel

#: The report: a script's output, through logging as everywhere in the project.
logger = logging.getLogger("bench")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of `repeats` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def write_checkpoint(folder: Path) -> int:
    """Save a random-weight real-size EnCodec 32 kHz in the hub layout; return its parameter count."""
    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig.from_dict(music_config())).eval()
    for layer in model.quantizer.layers:  # non-zero codebooks so decoding does real work
        layer.codebook.embed.normal_()
    model.save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "encodec_32khz"
        # Written in a child process so that this process's peak memory is the codec's alone.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            params = pool.apply(write_checkpoint, (folder,))
        rss_before = peak_rss_mib()

        codec = MusicCodec(music_tokenizer_path=folder, music_seconds=args.seconds)
        start = time.perf_counter()
        codec.model()
        load_s = time.perf_counter() - start

        wav = seeded_signal(32_000, args.seconds, seed=0)
        codec.decode(
            codec.encode(wav[:32_000])
        )  # warm-up: first calls initialise oneDNN/LSTM kernels
        codes = codec.encode(wav)
        encode_s, encode_cpu = timed(lambda: codec.encode(wav), args.repeats)
        decode_s, decode_cpu = timed(lambda: codec.decode(codes), args.repeats)

    rtf_enc, rtf_dec = encode_s / args.seconds, decode_s / args.seconds
    logger.info(
        f"EnCodec 32 kHz (real size, {params / 1e6:.1f} M parameters), torch {torch.__version__}"
    )
    logger.info(f"threads {args.threads}, audio {args.seconds:g} s -> codes {tuple(codes.shape)}")
    logger.info(f"load     {load_s:7.2f} s")
    logger.info(f"encode   {encode_s:7.2f} s wall  {encode_cpu:7.2f} s CPU   RTF {rtf_enc:.3f}")
    logger.info(f"decode   {decode_s:7.2f} s wall  {decode_cpu:7.2f} s CPU   RTF {rtf_dec:.3f}")
    total, total_cpu = encode_s + decode_s, encode_cpu + decode_cpu
    verdict = "meets" if rtf_enc + rtf_dec < 0.5 else "misses"
    logger.info(
        f"enc+dec  {total:7.2f} s wall  {total_cpu:7.2f} s CPU   "
        f"RTF {rtf_enc + rtf_dec:.3f} ({verdict} < 0.5)"
    )
    logger.info(
        f"peak RSS {peak_rss_mib():7.0f} MiB (torch + transformers alone: {rss_before:.0f} MiB)"
    )
    logger.info(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
