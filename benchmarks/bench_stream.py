"""Time to the first audio of a spoken answer against time to the whole answer, in the same run.

A spoken chat answer of `--seconds` of speech (50 codes a second; 10 s = 500 codes) on an
AnyGPT-shaped small model (hidden 256, intermediate 688 as LLaMA-2-7B's ratio, 4 layers, the demo's
tokenizer with the published modalities) with the demo's speech codec (tiny SpeechTokenizer and
SoundStorm), on this CPU:

(a) the Python API: `Conversation.stream(stream_audio=True)`: seconds to the first `AudioChunk` and
    to the last (the whole answer heard), against the same turn without streaming (the first sample
    exists once the span is generated and decoded whole), interleaved, `--reps` of each;
(b) `/v1/realtime` on a real `anygpt serve` (loopback, same model): seconds from `response.create` to
    the first `response.output_audio.delta` and to `response.done`, against a chat completion
    with audio that is not streamed, interleaved;
(c) the stage costs behind them: generation ms per code, the codec's first window and whole decode.

Target: the first audio within 25 % of the whole answer's time. The end-of-span token's row of the
small model's output layer is zeroed, so that its random weights never end the answer early: every
answer is exactly `--seconds` long. Prints medians.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from anygpt_core.api import AnyGPT
from anygpt_core.chat import AudioChunk, Conversation, MediaReady, Reply
from anygpt_core.demo import ensure_demo
from anygpt_core.engine.events import SpanClosed
from anygpt_core.plugins import discover

logger = logging.getLogger("bench_stream")

PLUGINS = ("image", "speech", "music")
PROMPT = "Tell me about the sea."
KEY = "sk-bench"


def build_small_model(folder: Path) -> tuple[Path, dict[str, str]]:
    """An AnyGPT-shaped small model in `folder` (the demo's tokenizer) and the demo's codec options."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    os.environ["ANYGPT_LOAD_PLUGINS"] = ",".join(PLUGINS)
    demo = ensure_demo(discover(load_only=list(PLUGINS)))
    tokenizer = AutoTokenizer.from_pretrained(demo.model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=max(49418, len(tokenizer)),  # the published vocabulary's size
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)  # peaked logits, as bench_generate's small model
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("<eosp>")] = 0  # never chosen
    target = folder / "small"
    model.save_pretrained(target, safe_serialization=True)
    for name in os.listdir(demo.model_dir):
        if name.startswith(("tokenizer", "special_tokens", "added_tokens")):
            shutil.copy(demo.model_dir / name, target / name)
    return target, {k: v for k, v in demo.options.items() if "speech" in k or "soundstorm" in k}


def python_api(gpt: AnyGPT, frames: int, *, stream: bool, seed: int) -> dict[str, float]:
    """Seconds from sending to: the first audio, the span's last code, the whole answer's audio."""
    chat = Conversation(gpt, max_new_tokens=frames + 1)  # the codes and the span's end
    started = time.perf_counter()
    times: dict[str, float] = {}
    samples = 0
    for item in chat.stream(PROMPT, to="speech", seed=seed, save=False, stream_audio=stream):
        now = time.perf_counter() - started
        if isinstance(item, AudioChunk):
            times.setdefault("first", now)
            samples += item.samples.numel()
        elif isinstance(item, SpanClosed):
            times["generated"] = now
            if item.codes.shape[1] != frames:
                raise SystemExit(f"the answer has {item.codes.shape[1]} codes, not {frames}")
        elif isinstance(item, MediaReady):
            times.setdefault("first", now)
            times["whole"] = now
            samples = samples or item.media.value.numel()
        elif isinstance(item, Reply):
            times["reply"] = now
    if samples != frames * 320:
        raise SystemExit(f"{samples} samples of audio, not {frames * 320}")
    return times


def start_server(model: Path, options: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    anygpt = Path(sys.executable).with_name("anygpt")
    flags = [f for name, value in options.items() for f in ("--" + name.replace("_", "-"), value)]
    command = [str(anygpt), "serve", "--port", "0", "--device", "cpu", "--api-key", KEY]
    command += ["--model-name-or-path", str(model), "--served-model-name", "small", *flags]
    env = {**os.environ, "ANYGPT_LOAD_PLUGINS": ",".join(PLUGINS)}
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"anygpt serve exited: {log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("anygpt serve did not start: " + log.read_text())


def realtime(url: str, frames: int) -> dict[str, float]:
    """Seconds from `response.create` to the first audio delta and to `response.done`."""
    from websockets.sync.client import connect

    times: dict[str, float] = {}
    audio = 0
    headers = {"Authorization": f"Bearer {KEY}"}
    with connect(url.replace("http", "ws") + "/v1/realtime", additional_headers=headers) as ws:
        ws.send(
            json.dumps({"type": "session.update", "session": {"max_output_tokens": frames + 1}})
        )
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": PROMPT}],
        }
        ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        started = time.perf_counter()
        ws.send(json.dumps({"type": "response.create"}))
        while True:
            event = json.loads(ws.recv(timeout=600))
            now = time.perf_counter() - started
            if event["type"] == "response.output_audio.delta":
                times.setdefault("first", now)
                audio += len(base64.b64decode(event["delta"]))
            elif event["type"] == "response.done":
                times["whole"] = now
                break
            elif event["type"] == "error":
                raise SystemExit(f"realtime error: {event['error']['message']}")
    if audio != frames * 320 * 3:  # PCM16 at 24 kHz
        raise SystemExit(f"{audio} bytes of audio, not {frames * 320 * 3}")
    return times


def whole_chat(url: str, frames: int) -> dict[str, float]:
    """A chat completion with audio, not streamed: the first sample arrives with the whole."""
    import httpx

    body = {
        "model": "small",
        "messages": [{"role": "user", "content": PROMPT}],
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
        "max_tokens": frames + 1,
    }
    started = time.perf_counter()
    answer = httpx.post(
        url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=600,
    )
    answer.raise_for_status()
    seconds = time.perf_counter() - started
    audio = base64.b64decode(answer.json()["choices"][0]["message"]["audio"]["data"])
    if len(audio) != frames * 320 * 3:
        raise SystemExit(f"{len(audio)} bytes of audio, not {frames * 320 * 3}")
    return {"first": seconds, "whole": seconds}


def interleaved(
    reps: int, streamed: Callable[[int], dict[str, float]], whole: Callable[[int], dict[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Medians of each timing over `reps` alternating runs (seeded by repetition)."""
    runs: tuple[list[dict[str, float]], list[dict[str, float]]] = ([], [])
    for rep in range(reps):
        runs[0].append(streamed(rep))
        runs[1].append(whole(rep))
    return tuple(  # type: ignore[return-value]
        {key: statistics.median(r[key] for r in group) for key in group[0]} for group in runs
    )


def report(name: str, streamed: dict[str, float], whole: dict[str, float]) -> None:
    ratio = streamed["first"] / streamed["whole"]
    logger.info(
        f"{name}: first audio {streamed['first']:.2f} s, whole answer {streamed['whole']:.2f} s "
        f"(first/whole {ratio:.0%}, target <= 25%: {'met' if ratio <= 0.25 else 'missed'}); "
        f"not streamed: first audio = whole answer {whole['whole']:.2f} s, first audio "
        f"{whole['whole'] / streamed['first']:.1f}x sooner streamed"
    )


def stage_costs(gpt: AnyGPT, frames: int, generated: float) -> None:
    """Generation per code, the codec's first window and whole decode, on the same codes."""
    codec = gpt.codecs.codec("speech")
    codes = torch.randint(0, 1024, (1, frames))
    started = time.perf_counter()
    chunks = codec.decode_stream(codes, seed=0)  # type: ignore[attr-defined]
    next(chunks)
    first = time.perf_counter() - started
    list(chunks)
    streamed = time.perf_counter() - started
    started = time.perf_counter()
    codec.decode(codes, seed=0)
    whole = time.perf_counter() - started
    logger.info(
        f"stages: generation {1000 * generated / frames:.1f} ms per code (50 codes = 1 s of "
        f"speech: {50 * generated / frames:.2f} s); codec first window {first:.2f} s, streamed "
        f"decode of all {streamed:.2f} s, whole decode {whole:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of the answer.")
    parser.add_argument("--reps", type=int, default=3, help="Runs of each, interleaved.")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="A 2 s answer, once, through the Python API only (the test's smoke run).",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    if args.quick:
        args.seconds, args.reps = 2.0, 1
    torch.set_num_threads(args.threads)
    frames = round(args.seconds * 50)
    folder = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    proc = None
    try:
        model, options = build_small_model(folder)
        gpt = AnyGPT.load(model, device="cpu", codec_options=options)
        logger.info(
            f"a {frames / 50:g} s spoken answer ({frames} codes), small model (vocabulary "
            f"{gpt.model.config.vocab_size}), demo speech codec, {args.reps} run(s) each, medians"
        )
        if not args.quick:
            python_api(gpt, frames, stream=True, seed=99)  # warm-up: weights, caches
        streamed, whole = interleaved(
            args.reps,
            lambda rep: python_api(gpt, frames, stream=True, seed=rep),
            lambda rep: python_api(gpt, frames, stream=False, seed=rep),
        )
        report("(a) Python API", streamed, whole)
        stage_costs(gpt, frames, whole["generated"])
        if args.quick:
            return  # the server's start alone takes longer than the rest
        proc, url = start_server(model, options, folder / "serve.log")
        realtime(url, frames)  # warm-up
        served, whole_served = interleaved(
            args.reps, lambda _: realtime(url, frames), lambda _: whole_chat(url, frames)
        )
        report("(b) /v1/realtime", served, whole_served)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
