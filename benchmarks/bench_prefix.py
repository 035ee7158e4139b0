"""A multi-turn chat with the prefix cache against the same chat without it, in the same run.

Every turn of a chat sends the whole history; without the prefix cache each turn runs it all again.
This builds a LLaMA model with the demo's tokenizer (`small_llama.py`: random weights, seeded;
hidden 1024, 8 layers by default: big enough that a prompt's prefill is real work on a CPU), then
holds the same chat twice through `Conversation` (greedy, `--turns` turns of a `--words`-word
message and a `--tokens`-token answer each): once with `prefix_cache_mb=0`, once with the default
cache. It prints each turn's seconds both ways, the last turn's ratio (the target of the feature:
a long history costs little), how many prompt tokens the cache supplied, and whether the answers
are identical.

Usage: python benchmarks/bench_prefix.py [--turns 8] [--words 40] [--tokens 32] [--hidden 1024]
       [--layers 8] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from small_llama import build_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["ANYGPT_LOAD_PLUGINS"] = "__none__"  # text only: a random model's spans are noise

TEXT = "the river ran past old stone walls where children played until the evening light had gone"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def chat(gpt: object, turns: int, words: int, tokens: int) -> tuple[list[float], list[str]]:
    """Seconds of each turn and each answer, for one conversation from scratch."""
    from anygpt_core.chat import Conversation

    conversation = Conversation(gpt, do_sample=False, max_new_tokens=tokens)  # type: ignore[arg-type]
    seconds, answers = [], []
    for turn in range(turns):
        vocabulary = TEXT.split()
        message = " ".join(vocabulary[(turn * 7 + i) % len(vocabulary)] for i in range(words))
        started = time.perf_counter()
        answers.append(conversation.send(f"Turn {turn}: {message}").text)
        seconds.append(time.perf_counter() - started)
    return seconds, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--words", type=int, default=40, help="words in each user message")
    parser.add_argument("--tokens", type=int, default=32, help="tokens in each answer")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="3 turns of a tiny model (a test)")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.words, args.tokens, args.hidden, args.layers = 3, 20, 8, 256, 2

    from anygpt_core.api import AnyGPT

    work = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
    try:
        model = build_model(work, hidden=args.hidden, layers=args.layers)
        runs = {}
        for name, megabytes in (("without", 0), ("with", 256)):
            gpt = AnyGPT.load(model, device="cpu", dtype="float32", prefix_cache_mb=megabytes)
            chat(gpt, 1, 4, 2)  # warm-up: the first forward passes are not timed
            cache = gpt.backend.prefix_cache
            if cache is not None:
                cache.clear()
                cache.reused = cache.computed = 0
            runs[name] = chat(gpt, args.turns, args.words, args.tokens)
            if cache is not None:
                total = cache.reused + cache.computed
                supplied = f"{cache.reused} of {total} prompt tokens ({cache.reused / total:.0%})"
        without, said = runs["without"]
        with_cache, said_again = runs["with"]
        say(
            f"chat of {args.turns} turns ({args.words}-word messages, {args.tokens}-token answers), "
            f"LLaMA hidden {args.hidden}, {args.layers} layers, float32, greedy"
        )
        for turn, (a, b) in enumerate(zip(without, with_cache, strict=True)):
            say(
                f"turn {turn + 1}: {a:.3f} s without the prefix cache, {b:.3f} s with: {a / b:.2f}x"
            )
        say(
            f"whole chat: {sum(without):.2f} s without, {sum(with_cache):.2f} s with: "
            f"{sum(without) / sum(with_cache):.2f}x"
        )
        say(f"the cache supplied {supplied}")
        same = sum(a == b for a, b in zip(said, said_again, strict=True))
        say(f"answers identical with and without the cache: {same}/{args.turns}")
        say(f"last turn: {without[-1] / with_cache[-1]:.2f}x faster with the prefix cache")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
