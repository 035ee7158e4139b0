"""Reference-exact prompt tokenizing (`ReferencePromptEncoder`) against the fast tokenizer, same run.

Texts of 10 KB, 160 KB and 1 MB (prose with accents, CJK, emoji, newlines and the chat template's
added tokens) are tokenized by the demo model's tokenizer files three ways: the fast (Rust)
tokenizer transformers loads, our reference encoder's ids (`encode`, the prompt path) and its ids
with character spans (`ids_with_offsets`, the training-data path, against the fast tokenizer's
`return_offsets_mapping=True`). Each line gives MB/s and the ratio of times (ours / fast) at that
size; the goal is linear (MB/s flat across sizes) and within
3x of the fast tokenizer. The two reference paths must give the same ids (checked: exit 1 if not).

Best of `--reps` per size and method, interleaved.
Usage: python benchmarks/bench_tokenize.py [--reps 3] [--sizes 10000,160000,1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["ANYGPT_LOAD_PLUGINS"] = "__none__"  # the template's tokens are enough to split on

#: One paragraph of a chat transcript, repeated to the size measured.
PARAGRAPH = (
    "[Human]: Describe the café on the corner, then translate it: 東京の小さな喫茶店。<eoh> "
    "[MMGPT]: The café has three tables, a piano and a cat called Émile 🐈; mornings are "
    "quiet, afternoons loud.\nIn Japanese: 角のカフェにはテーブルが三つあります。<eos>\n"
)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def best(func: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sizes", default="10000,160000,1000000")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover
    from anygpt_core.tokenization import ReferencePromptEncoder

    directory = ensure_demo(discover()).model_dir
    fast = AutoTokenizer.from_pretrained(directory)
    fast.model_max_length = sys.maxsize  # no warning about texts longer than the model's context
    reference = ReferencePromptEncoder.from_directory(directory, fast)
    if reference is None:
        raise SystemExit("the demo model has no tokenizer.model")
    same = True
    say(
        f"{'size':>9}  {'fast MB/s':>9}  {'ids MB/s':>8}  {'ratio':>5}  {'fast+spans MB/s':>15}  "
        f"{'ids+spans MB/s':>15}  ratio"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        text = (PARAGRAPH * (size // len(PARAGRAPH) + 1))[:size]
        megabytes = len(text.encode("utf-8")) / 1e6
        same &= reference.ids(text) == reference.ids_with_offsets(text)[0]
        fast_s = best(lambda t=text: fast(t).input_ids, args.reps)
        ids_s = best(lambda t=text: reference.ids(t), args.reps)
        fast_spans_s = best(lambda t=text: fast(t, return_offsets_mapping=True), args.reps)
        spans_s = best(lambda t=text: reference.ids_with_offsets(t), args.reps)
        say(
            f"{size:>9,}  {megabytes / fast_s:>9.2f}  {megabytes / ids_s:>8.2f}  "
            f"{ids_s / fast_s:>4.2f}x  {megabytes / fast_spans_s:>15.2f}  "
            f"{megabytes / spans_s:>15.2f}  {spans_s / fast_spans_s:.2f}x"
        )
    say(f"reference ids {'identical' if same else 'DIFFERENT'} with and without spans")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
