"""Image codec timings at the published sizes with random weights (no downloads).

Measures, on this machine's device (CPU float32 / GPU float16):
- SEED-2 tokenizer at full size (EVA-ViT-g 39 blocks + Q-Former + VQ): encode time per 224x224
  image and codes -> unCLIP embedding time;
- one denoising step of a Stable-unCLIP-2.1-sized UNet (SD 2.1 layout: channels 320/640/1280/1280,
  head dims 5/10/20/20, cross-attention 1024, projection class embedding 2048) at the real latent
  size 4x96x96, batch 2 (classifier-free guidance), with random weights;
- the whole decode path on the tiny demo pipeline, for comparison;
- peak resident memory (and peak CUDA memory on a GPU).

Run: python plugins/anygpt_image/benchmarks/bench_image.py [--unet-steps N] [--skip-unet]
     [--skip-seed] [--low-memory]   (peak RSS is per process: compare low-memory in two runs)
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from anygpt_image.codec import ImageCodec
from anygpt_image.config import SeedConfig
from anygpt_image.demo import write_demo_assets
from anygpt_image.plugin import IMAGE
from anygpt_image.preprocess import to_pixels
from anygpt_image.seed import SeedTokenizer
from PIL import Image

#: The report: a script's output, through logging as everywhere in the project.
logger = logging.getLogger("bench")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def bench_seed(device: torch.device, dtype: torch.dtype, repeats: int) -> None:
    start = time.perf_counter()
    with torch.device("meta"):
        model = SeedTokenizer(SeedConfig.published())
    model = model.to_empty(device=device)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    model = model.to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    logger.info(
        f"SEED-2 full size: {params / 1e9:.3f} B parameters, built in {time.perf_counter() - start:.1f} s"
    )
    rng = np.random.default_rng(0)
    picture = Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8))
    pixels = to_pixels(picture, 224).to(device, dtype)
    model.encode(pixels)  # warm-up
    encode = timed(lambda: model.encode(pixels), repeats)
    codes = model.encode(pixels)
    embed = timed(lambda: model.embed(codes), repeats)
    preprocess = timed(lambda: to_pixels(picture, 224), repeats)
    logger.info(f"  preprocess 640x480 -> 224: {statistics.median(preprocess) * 1e3:.1f} ms")
    logger.info(
        f"  encode per image:          {statistics.median(encode):.3f} s (median of {repeats})"
    )
    logger.info(f"  codes -> embedding (1024): {statistics.median(embed) * 1e3:.1f} ms")
    logger.info(f"  peak RSS so far: {peak_rss_gib():.2f} GiB")


def bench_unet(device: torch.device, dtype: torch.dtype, steps: int, *, low_memory: bool) -> None:
    from diffusers import UNet2DConditionModel

    start = time.perf_counter()
    unet = (
        UNet2DConditionModel(
            sample_size=96,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2048,
        )
        .to(device, dtype)
        .eval()
    )
    if low_memory:  # what --image-low-memory does to the UNet on any device
        unet.set_attention_slice("auto")
    params = sum(p.numel() for p in unet.parameters())
    logger.info(
        f"unCLIP-size UNet: {params / 1e6:.0f} M parameters, built in {time.perf_counter() - start:.1f} s"
    )
    latents = torch.randn(2, 4, 96, 96, device=device, dtype=dtype)
    text = torch.randn(2, 77, 1024, device=device, dtype=dtype)
    labels = torch.randn(2, 2048, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    with torch.no_grad():
        times = timed(
            lambda: unet(latents, t, encoder_hidden_states=text, class_labels=labels), steps
        )
    logger.info(
        f"  one denoising step (batch 2, 4x96x96): {statistics.median(times):.2f} s "
        f"(median of {steps}; first {times[0]:.2f} s)"
    )
    logger.info(f"  x 20 steps ~ {20 * statistics.median(times):.0f} s of UNet time per image")
    logger.info(f"  peak RSS so far: {peak_rss_gib():.2f} GiB")


def bench_tiny_decode(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        values = write_demo_assets(Path(scratch))
        options = {o.name: o.default for o in IMAGE.options} | values
        codec = ImageCodec(options)
        codes = torch.randint(0, 8192, (1, 32), generator=torch.Generator().manual_seed(0))
        codec.decode(codes, seed=0)  # load + warm-up
        times = timed(lambda: codec.decode(codes, seed=0), repeats)
    logger.info(
        f"tiny demo pipeline, {codec.options.image_steps} steps: {statistics.median(times):.2f} s per image "
        f"({statistics.median(times) / codec.options.image_steps * 1e3:.0f} ms per step)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unet-steps", type=int, default=2)
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument(
        "--skip-seed", action="store_true", help="Time only the UNet (own peak RSS)."
    )
    parser.add_argument(
        "--low-memory", action="store_true", help="Sliced attention, as --image-low-memory."
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    logger.info(f"device {device}, dtype {dtype}, torch threads {torch.get_num_threads()}")
    if not args.skip_seed:
        bench_seed(device, dtype, args.repeats)
    if not args.skip_unet:
        bench_unet(device, dtype, args.unet_steps, low_memory=args.low_memory)
    bench_tiny_decode(args.repeats)
    logger.info(f"peak RSS: {peak_rss_gib():.2f} GiB")
    if device.type == "cuda":
        logger.info(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
