"""Speed of the speech codec at the published sizes (random weights; speed does not depend on them).

Measures, for `--seconds` of speech (default 10 s = 500 frames):

- ASR input: SpeechTokenizer encoding (all RVQ layers are computed; layer 0 is kept).
- TTS output: SoundStorm mask-predict (`--steps`, default vc_steps 3) with a `--prompt-seconds`
  voice prompt (default 3 s, encoded as part of the run), then SpeechTokenizer decoding.
- A per-frame baseline: decoding the 7 acoustic layers one frame at a time, one Conformer pass per
  frame (the frame's 7 layers taken greedily from that pass). Every such pass runs over the whole
  prompt + target sequence, exactly like a SoundStorm pass, so its total time is estimated as
  frames x the shortest of `--baseline-frames` timed per-frame steps.

Real-time factor (RTF) = compute time / audio duration (below 1 is faster than real time).

Usage: python plugins/anygpt_speech/benchmarks/bench_speech.py [--seconds 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch
from anygpt_speech.soundstorm import SoundStorm, SoundStormConfig
from anygpt_speech.tokenizer import (
    SpeechTokenizerConfig,
    build_speech_tokenizer,
    decode_codes,
    encode_all_layers,
)

#: The report: a script's output, through logging as everywhere in the project.
logger = logging.getLogger("bench")


def timed(fn, device: torch.device):  # noqa: ANN001, ANN201 - benchmark helper
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


@torch.inference_mode()
def per_frame_step(model: SoundStorm, semantic, acoustic, frame: int):  # noqa: ANN001, ANN201
    """Fill the 7 acoustic layers of one frame from one full-sequence pass."""
    logits = model.logits(semantic, acoustic)  # (1, N, Q, L)
    acoustic[:, frame] = logits[:, frame].argmax(dim=-1)
    return acoustic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--prompt-seconds", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--baseline-frames", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    tokenizer = build_speech_tokenizer(SpeechTokenizerConfig.published()).to(device)
    rate, hop = 16000, 320
    soundstorm = SoundStorm(SoundStormConfig()).to(device).eval()
    params = sum(p.numel() for p in soundstorm.parameters())

    speech = 0.1 * torch.randn(int(args.seconds * rate))
    voice = 0.1 * torch.randn(int(args.prompt_seconds * rate))
    encode_all_layers(tokenizer, speech[:rate])  # warm-up
    codes, t_encode = timed(lambda: encode_all_layers(tokenizer, speech), device)
    semantic = codes[:1]  # (1, T)
    frames = semantic.shape[1]

    soundstorm.generate(semantic[:, :50].to(device), steps=1)  # warm-up
    prompt = encode_all_layers(tokenizer, voice).T[None]
    _, t_prompt = timed(lambda: encode_all_layers(tokenizer, voice), device)
    acoustic, t_storm = timed(
        lambda: soundstorm.generate(semantic.to(device), prompt=prompt, steps=args.steps), device
    )
    all_layers = torch.cat([semantic.to(device), acoustic[0].T])
    wav, t_decode = timed(lambda: decode_codes(tokenizer, all_layers), device)
    assert wav.numel() == frames * hop
    passes = soundstorm.forward_passes(args.steps)

    # Per-frame baseline on the same prompt + target sequence.
    full_semantic = torch.cat([prompt[..., 0], semantic.to(device)], dim=1)
    masked = torch.full((1, frames, 7), soundstorm.mask_id, dtype=torch.long, device=device)
    state = torch.cat([prompt[..., 1:], masked], dim=1)
    start = prompt.shape[1]
    step_times = []
    for frame in range(start, start + args.baseline_frames):
        _, seconds = timed(
            lambda f=frame, s=state: per_frame_step(soundstorm, full_semantic, s, f), device
        )
        step_times.append(seconds)
    t_per_frame = min(step_times) * frames  # min: least disturbed by other load on the machine

    audio = frames * hop / rate
    results = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "audio_seconds": audio,
        "frames": frames,
        "prompt_frames": int(prompt.shape[1]),
        "soundstorm_parameters": params,
        "asr_encode_s": round(t_encode, 3),
        "asr_rtf": round(t_encode / audio, 4),
        "tts_prompt_encode_s": round(t_prompt, 3),
        "tts_soundstorm_s": round(t_storm, 3),
        "tts_decoder_s": round(t_decode, 3),
        "tts_rtf": round((t_prompt + t_storm + t_decode) / audio, 4),
        "soundstorm_passes": passes,
        "soundstorm_s_per_pass": round(t_storm / passes, 3),
        "per_frame_passes": frames,
        "per_frame_s_per_pass_measured": [round(t, 3) for t in step_times],
        "per_frame_estimated_s": round(t_per_frame, 1),
        "per_frame_rtf": round(t_per_frame / audio, 3),
        "parallel_speedup": round(t_per_frame / t_storm, 1),
        "pass_count_ratio": round(frames / passes, 1),
    }
    if args.json:
        logger.info(json.dumps(results))
        return
    width = max(map(len, results))
    for key, value in results.items():
        logger.info(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
