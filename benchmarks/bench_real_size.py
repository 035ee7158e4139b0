"""Every seed task end to end at the published sizes, with seeded random weights: memory and time.

Builds the stack at its published configuration, with random weights, in the dtype the codecs and
the chosen mode use, and no multi-GB files: a 7B LLaMA with the AnyGPT layout (meta device, then
materialised and quantised layer by layer), SEED-2 (1.15B), Stable unCLIP 2.1 (UNet, VAE, OpenCLIP-H
text encoder), SoundStorm (351M) at their full sizes; SpeechTokenizer and EnCodec 32 kHz (a few
hundred MB) are written to a scratch folder and load from there as users' files do. The LLM reuses
the embedded demo's tokenizer (the AnyGPT token layout, a smaller text vocabulary).

Each seed task runs once through the public API (`AnyGPT.prepare`, `stream`, `finish`): text->image,
image->text, text->speech with and without a voice prompt, ASR, text->music, music->text. Per task
and stage (codec encode, prefill, decode, codec decode; and the LLM load) it records the peak memory
(process RSS sampled every 10 ms on the CPU; `torch.cuda.max_memory_allocated` on a GPU), the time,
and prefill/decode tokens per second. Random weights choose random lengths, so lengths are fixed:
32 image codes, `--speech-seconds` of speech, `--music-seconds` of music, `--text-tokens` of text.
`--steps` (unCLIP) and `--soundstorm-steps` keep CPU runs short: the report says which were used.

Run: python benchmarks/bench_real_size.py [--quantize int8|int4|none] [--offload] [--device cuda]
     [--steps N] [--soundstorm-steps N] [--json out.json]
     python benchmarks/bench_real_size.py --quick    (the same code at tiny sizes, in seconds)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anygpt_core.api import AnyGPT, CodecSet
from anygpt_core.plugins import PluginSet

#: The report: a script's output, through logging as everywhere in the project.
logger = logging.getLogger("bench")

GIB = 2**30
TASKS = (
    "text->image",
    "image->text",
    "text->speech",
    "text->speech+voice",
    "asr",
    "text->music",
    "music->text",
)


@dataclass
class Stage:
    """One measured stage of one task."""

    task: str
    stage: str
    seconds: float
    peak_gib: float
    tokens: int = 0
    tokens_per_s: float = 0.0


@dataclass
class Report:
    """What the run measured, and with which settings."""

    settings: dict[str, Any]
    stages: list[Stage] = field(default_factory=list)


class PeakMemory:
    """Peak memory over a `with` block: process RSS sampled every 10 ms, or CUDA's allocator peak."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        """The process's resident set size in bytes."""
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.rss())

    def so_far(self) -> int:
        """The peak inside the current `measure` block up to now."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(self.peak, self.rss())

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        """Track the peak inside the block (`peak` bytes when it ends)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self.peak = self.rss()
        self._stop.clear()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, self.rss())


# -- random components at published (or tiny) sizes ----------------------------------------------


def random_module(
    factory: Callable[[], torch.nn.Module],
    device: torch.device,
    dtype: torch.dtype,
    *,
    only: tuple[str, ...] = (),
) -> torch.nn.Module:
    """A module built on the meta device, then given seeded N(0, 0.02) weights (ones for 1-d
    weights, zeros for biases) in `dtype` on `device`; with `only`, just the parameters whose
    names start so are materialised (the rest stay on the meta device, as a partial load leaves
    them)."""
    with torch.device("meta"):
        module = factory()
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        for key, param in list(sub.named_parameters(recurse=False)):
            if only and not f"{prefix}{key}".startswith(only):
                continue
            value = torch.empty(param.shape, dtype=dtype, device=device)
            if param.ndim > 1:
                value.normal_(0.0, 0.02)
            else:
                value.fill_(1.0 if key == "weight" else 0.0)
            sub._parameters[key] = torch.nn.Parameter(value, requires_grad=False)
        for key, buffer in list(sub.named_buffers(recurse=False)):
            if only and not f"{prefix}{key}".startswith(only):
                continue
            fresh = torch.zeros(buffer.shape, dtype=buffer.dtype, device=device)
            if not buffer.is_floating_point() and buffer.ndim:  # position ids
                fresh.copy_(torch.arange(buffer.shape[-1], device=device).expand(buffer.shape))
            sub._buffers[key] = fresh
    return module.eval()


def build_llm(
    vocab: int, *, quick: bool, device: torch.device, dtype: torch.dtype, quantize: str | None
) -> torch.nn.Module:
    """LLaMA-2-7B (or the demo's size) with the AnyGPT token space, layer by layer quantised."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt_core.engine.quantize import QuantizedLinear, rebuild_meta_buffers

    sizes = (
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        }
        if quick
        else {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
        }
    )
    config = LlamaConfig(
        vocab_size=vocab,
        num_key_value_heads=sizes["num_attention_heads"],
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        **sizes,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    for name, module in list(model.named_modules()):
        for key, param in list(module.named_parameters(recurse=False)):
            value = torch.empty(param.shape, dtype=dtype, device=device)
            value.normal_(0.0, 0.02) if param.ndim > 1 else value.fill_(1.0)
            module._parameters[key] = torch.nn.Parameter(value, requires_grad=False)
        if quantize and isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            model.set_submodule(name, QuantizedLinear(module.weight, quantize, dtype=dtype))
            module._parameters.clear()  # the list above still holds the module: free its weight
    rebuild_meta_buffers(model, device)
    return model.eval()


def build_unclip(
    tokenizer_dir: Path, *, quick: bool, device: torch.device, dtype: torch.dtype
) -> Any:  # noqa: ANN401 - a diffusers pipeline
    """Stable unCLIP 2.1's decoding half (UNet, VAE, OpenCLIP-H text encoder), random weights."""
    from anygpt_image.unclip import EmbeddingUnCLIPPipeline
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    width, blocks, heads = (
        (32, (32, 64), (2, 4)) if quick else (1024, (320, 640, 1280, 1280), (5, 10, 20, 20))
    )
    down = ("CrossAttnDownBlock2D",) * (len(blocks) - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(blocks) - 1)
    unet = random_module(
        lambda: UNet2DConditionModel(
            sample_size=16 if quick else 96,
            in_channels=4,
            out_channels=4,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=blocks,
            layers_per_block=1 if quick else 2,
            attention_head_dim=heads,
            cross_attention_dim=width,
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * (32 if quick else 1024),
        ),
        device,
        dtype,
    )
    vae_blocks = (32, 64) if quick else (128, 256, 512, 512)
    vae = random_module(
        lambda: AutoencoderKL(
            block_out_channels=vae_blocks,
            down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
            up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
            layers_per_block=1 if quick else 2,
            latent_channels=4,
            sample_size=32 if quick else 768,
        ),
        device,
        dtype,
    )
    text_config = CLIPTextConfig(
        vocab_size=1000 if quick else 49408,  # OpenCLIP's; the demo tokenizer's ids are fewer
        hidden_size=width,
        intermediate_size=37 if quick else 4096,
        num_hidden_layers=2 if quick else 23,
        num_attention_heads=4 if quick else 16,
        projection_dim=width,
        max_position_embeddings=77,
        hidden_act="quick_gelu" if quick else "gelu",
    )
    text_encoder = random_module(lambda: CLIPTextModel(text_config), device, dtype)
    pipe = EmbeddingUnCLIPPipeline(
        feature_extractor=None,
        image_encoder=None,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=32 if quick else 1024),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            skip_prk_steps=True,
            steps_offset=1,
        ),
        vae=vae,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def write_small_codecs(directory: Path, *, quick: bool) -> dict[str, str]:
    """SpeechTokenizer and EnCodec 32 kHz at their sizes, seeded, in the published file layouts."""
    from anygpt_music.tiny import TINY_WIDTHS, build_seeded_encodec, music_config
    from anygpt_speech.checkpoints import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
    from anygpt_speech.tokenizer import SpeechTokenizerConfig, build_speech_tokenizer

    config = SpeechTokenizerConfig.tiny() if quick else SpeechTokenizerConfig.published()
    torch.manual_seed(0)
    tokenizer = build_speech_tokenizer(config)
    (directory / TOKENIZER_FILE).parent.mkdir(parents=True, exist_ok=True)
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config.model_dump()))
    torch.save(tokenizer.state_dict(), directory / TOKENIZER_FILE)
    music = build_seeded_encodec(music_config(**(TINY_WIDTHS if quick else {})), seconds=1.0)
    music.save_pretrained(directory / "encodec_32khz", safe_serialization=True)
    return {
        "speech_tokenizer_path": str(directory / TOKENIZER_FILE),
        "speech_tokenizer_config": str(directory / TOKENIZER_CONFIG_FILE),
        "music_tokenizer_path": str(directory / "encodec_32khz"),
    }


def use_random_codecs(plugins: PluginSet, tokenizer_dir: Path, *, quick: bool) -> None:
    """Point the image and speech modalities at codecs whose big models are random.

    Their loaders (SEED-2, unCLIP, SoundStorm) build seeded random models at `quick` or published
    sizes instead of reading files, at the same moment (first use) and on the same device and
    dtype; everything else is the plugins' own code. With `--offload` a released codec builds
    its models again on its next call, as it would load them again.
    """
    from anygpt_image.codec import ImageCodec
    from anygpt_image.config import SeedConfig
    from anygpt_image.seed import DECODE_PREFIXES, SeedTokenizer
    from anygpt_speech.codec import SpeechCodec
    from anygpt_speech.soundstorm import SoundStorm, SoundStormConfig

    seed_config = SeedConfig.tiny() if quick else SeedConfig.published()
    storm_config = SoundStormConfig.tiny() if quick else SoundStormConfig()

    class RandomImageCodec(ImageCodec):
        @property
        def seed_sizes(self) -> SeedConfig:
            return seed_config

        def _load_seed_decoder(self) -> SeedTokenizer:
            return random_module(
                lambda: SeedTokenizer(seed_config), self.device, self.dtype, only=DECODE_PREFIXES
            )

        def _load_seed(self) -> SeedTokenizer:
            model = random_module(lambda: SeedTokenizer(seed_config), self.device, self.dtype)
            self.forget("seed decoder")  # the whole model serves decoding now
            return model

        def _load_pipeline(self) -> Any:  # noqa: ANN401 - a diffusers pipeline
            return build_unclip(tokenizer_dir, quick=quick, device=self.device, dtype=self.dtype)

    class RandomSpeechCodec(SpeechCodec):
        def _load_soundstorm(self) -> SoundStorm:
            return random_module(lambda: SoundStorm(storm_config), self.device, torch.float32)

    for name, factory in (("image", RandomImageCodec), ("speech", RandomSpeechCodec)):
        spec = plugins.modalities[name]
        plugins.modalities[name] = spec.model_copy(update={"codec_factory": factory})


# -- inputs -----------------------------------------------------------------------------------


def write_inputs(
    directory: Path, *, speech_seconds: float, music_seconds: float
) -> dict[str, Path]:
    """A picture, speech, a 3 s voice prompt and music, seeded, as files."""
    import soundfile
    from PIL import Image

    rng = np.random.default_rng(0)
    picture = directory / "picture.png"
    Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8)).save(picture)

    def tone(path: Path, seconds: float, rate: int, freq: float) -> Path:
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
        soundfile.write(path, wave.astype(np.float32), rate)
        return path

    return {
        "image": picture,
        "speech": tone(directory / "speech.wav", speech_seconds, 16000, 220.0),
        "voice": tone(directory / "voice.wav", 3.0, 16000, 330.0),
        "music": tone(directory / "music.wav", music_seconds, 32000, 440.0),
    }


# -- the run ----------------------------------------------------------------------------------


def run_task(
    gpt: AnyGPT,
    name: str,
    line: str,
    new_tokens: int,
    memory: PeakMemory,
    report: Report,
) -> None:
    """One task through the public API, stage by stage."""
    from anygpt_core.engine.events import Done, TokenEvent

    def record(stage: str, seconds: float, tokens: int = 0) -> None:
        rate = tokens / seconds if tokens and seconds > 0 else 0.0
        entry = Stage(
            name, stage, round(seconds, 3), round(memory.peak / GIB, 3), tokens, round(rate, 2)
        )
        report.stages.append(entry)
        logger.info(
            f"  {name:<19} {stage:<13} {seconds:8.2f} s {entry.peak_gib:7.2f} GiB"
            + (f" {tokens:5d} tok {rate:8.2f} tok/s" if tokens else "")
        )

    started = time.perf_counter()
    with memory.measure():
        prepared = gpt.prepare(line, seed=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    if prepared.task.source != "text":
        record("codec encode", time.perf_counter() - started)
    prompt = int(prepared.input_ids.shape[-1])
    events: list[Any] = []
    first, prefill_peak = None, 0
    with memory.measure():
        start = time.perf_counter()
        for event in gpt.stream(prepared):
            events.append(event)
            if first is None and isinstance(event, TokenEvent):
                first, prefill_peak = time.perf_counter(), memory.so_far()
    done = time.perf_counter()
    decode_peak, memory.peak = memory.peak, prefill_peak
    record("prefill", (first or done) - start, prompt)
    memory.peak = decode_peak
    generated = len(events[-1].token_ids) if isinstance(events[-1], Done) else 0
    record("decode", done - (first or done), max(generated - 1, 0))
    with memory.measure():
        start = time.perf_counter()
        result = gpt.finish(prepared, events, started=start, save=False)
    if prepared.task.target != "text":
        record("codec decode", time.perf_counter() - start)
    shapes = [tuple(s.codes.shape) for s in result.spans]
    logger.info(f"  {name}: {result.new_tokens} new tokens, spans {shapes}")


def main() -> None:
    """Parse flags, build the stack, run the tasks, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: the same code, seconds.")
    parser.add_argument("--quantize", default="int8", choices=["int8", "int4", "none"])
    parser.add_argument("--offload", action="store_true", help="As --offload codecs.")
    parser.add_argument("--image-low-memory", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N].")
    parser.add_argument("--dtype", default="bfloat16", help="The LLM's compute dtype.")
    parser.add_argument("--steps", type=int, default=None, help="unCLIP steps (CPU 2, GPU 20).")
    parser.add_argument("--soundstorm-steps", type=int, default=None, help="(CPU 1, GPU 3).")
    parser.add_argument("--speech-seconds", type=float, default=None, help="(CPU 1, GPU 5).")
    parser.add_argument("--music-seconds", type=float, default=None, help="(CPU 0.5, GPU 5).")
    parser.add_argument("--text-tokens", type=int, default=None, help="(CPU 8, GPU 32).")
    parser.add_argument("--tasks", default=",".join(TASKS), help="Comma-separated subset.")
    parser.add_argument("--json", type=Path, default=None, help="Write the report here.")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps or (20 if gpu else 2)
    storm_steps = args.soundstorm_steps or (3 if gpu else 1)
    speech_seconds = args.speech_seconds or (5.0 if gpu else 1.0)
    music_seconds = args.music_seconds or (5.0 if gpu else 0.5)
    text_tokens = args.text_tokens or (32 if gpu else 8)
    quantize = None if args.quantize == "none" else args.quantize
    torch.manual_seed(0)
    from anygpt_core.demo import ensure_demo
    from anygpt_core.loading import load_tokenizer
    from anygpt_core.plugins import discover

    plugins = discover()
    demo = ensure_demo(plugins)
    tokenizer = load_tokenizer(demo.model_dir)
    settings = {
        "size": "tiny" if args.quick else "published",
        "device": str(device),
        "llm_dtype": args.dtype,
        "quantize": args.quantize,
        "offload_codecs": args.offload,
        "image_low_memory": args.image_low_memory,
        "unclip_steps": steps,
        "soundstorm_steps": storm_steps,
        "speech_seconds": speech_seconds,
        "music_seconds": music_seconds,
        "text_tokens": text_tokens,
        "image_codes": 32,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    report = Report(settings)
    logger.info(f"settings: {json.dumps(settings)}")
    memory = PeakMemory(device)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        options = {
            **write_small_codecs(folder, quick=args.quick),
            "image_device": str(device),
            "speech_device": str(device),
            "image_steps": steps,
            "image_low_memory": args.image_low_memory,
            "soundstorm_steps": storm_steps,
            "speech_max_seconds": 60.0,
            "music_seconds": 60.0,
        }
        inputs = write_inputs(folder, speech_seconds=speech_seconds, music_seconds=music_seconds)
        start = time.perf_counter()
        with memory.measure():
            model = build_llm(
                len(tokenizer),
                quick=args.quick,
                device=device,
                dtype=getattr(torch, args.dtype),
                quantize=quantize,
            )
        load = Stage(
            "(all)", "LLM load", round(time.perf_counter() - start, 3), round(memory.peak / GIB, 3)
        )
        report.stages.append(load)
        logger.info(
            f"LLM built ({args.quantize}): {load.seconds:.1f} s, peak {load.peak_gib:.2f} GiB"
        )
        unclip_tokenizer = Path(demo.options["image_decoder_path"]) / "tokenizer"
        use_random_codecs(plugins, unclip_tokenizer, quick=args.quick)
        codecs = CodecSet(plugins, options, offload=args.offload)
        gpt = AnyGPT(model, tokenizer, plugins, codecs, output_dir=folder, is_demo=True)
        speech_codes, music_frames = round(50 * speech_seconds), round(50 * music_seconds)
        lines = {
            "text->image": ("text|image|a red double-decker bus in the rain", 33),
            "image->text": (f"image|text|{inputs['image']}", text_tokens),
            "text->speech": (
                "text|speech|The quick brown fox jumps over the lazy dog.",
                speech_codes + 1,
            ),
            "text->speech+voice": (
                f"text|speech|The quick brown fox jumps over the lazy dog.|{inputs['voice']}",
                speech_codes + 1,
            ),
            "asr": (f"speech|text|{inputs['speech']}", text_tokens),
            "text->music": ("text|music|a calm piano piece", 4 * music_frames + 1),
            "music->text": (f"music|text|{inputs['music']}", text_tokens),
        }
        for name in args.tasks.split(","):
            line, new_tokens = lines[name]
            logger.info(f"{name}:")
            run_task(gpt, name, line, new_tokens, memory, report)
    peak = max(s.peak_gib for s in report.stages)
    logger.info(table(report))
    logger.info(f"highest peak: {peak:.2f} GiB ({'GPU allocated' if gpu else 'process RSS'})")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"settings": settings, "stages": [asdict(s) for s in report.stages]}, indent=1
            )
        )
        logger.info(f"wrote {args.json}")


def table(report: Report) -> str:
    """The stages as a Markdown table."""
    rows = [
        "| task | stage | seconds | peak GiB | tokens | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for s in report.stages:
        rate = f"{s.tokens_per_s:.2f}" if s.tokens else ""
        rows.append(
            f"| {s.task} | {s.stage} | {s.seconds:.2f} | {s.peak_gib:.2f} | "
            f"{s.tokens or ''} | {rate} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
