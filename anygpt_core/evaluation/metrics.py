"""The paper's metrics, computed by the libraries that define them (the core's `eval` extra).

- WER: jiwer, after Whisper's English text normaliser (the `whisper-normalizer` package carries
  OpenAI's normaliser and its spelling table), as the AnyGPT authors advised (their issue #40).
- CIDEr: pycocoevalcap, the COCO caption evaluation, on PTB-tokenised text (its tokeniser runs
  Stanford CoreNLP in Java: a Java runtime must be on PATH).
- Cosine scores (CLIP, CLAP, SIM) come from the scorer models: `anygpt_core.evaluation.scorers`.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Sequence
from functools import cache
from typing import Any

from anygpt_core.errors import PluginError

__all__ = ["CIDER", "WER", "cider", "normalize_english", "require", "require_java", "wer"]

#: The modules `wer` and `cider` import (an `EvalTask`'s `libraries`); `java` is the PTB tokeniser's.
WER = ("jiwer", "whisper_normalizer.english")
CIDER = ("pycocoevalcap.cider.cider", "pycocoevalcap.tokenizer.ptbtokenizer", "java")

#: What each metric library is installed as.
_PACKAGES = {
    "jiwer": "jiwer",
    "whisper_normalizer": "whisper-normalizer",
    "pycocoevalcap": "pycocoevalcap",
}


def require(module: str) -> Any:  # noqa: ANN401 - a module
    """Import a metric library, or fail in one line naming what to install (exit 5).

    `java` stands for the Java runtime pycocoevalcap runs: found on PATH, not imported.
    """
    if module == "java":
        require_java()
        return None
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = _PACKAGES.get(module.split(".")[0], module)
        raise PluginError(
            f"{module} is not installed: pip install {package}, or the core's eval extra "
            "(pip install '.[eval]' in the checkout)"
        ) from err


@cache
def _normalizer() -> Any:  # noqa: ANN401 - whisper_normalizer's EnglishTextNormalizer
    return require("whisper_normalizer.english").EnglishTextNormalizer()


def require_java() -> None:
    """Fail in one line when no `java` runs pycocoevalcap's PTB tokeniser (exit 5)."""
    if shutil.which("java") is None:
        raise PluginError(
            "CIDEr needs a Java runtime for pycocoevalcap's PTB tokeniser: install one "
            "(Debian: apt-get install default-jre-headless)"
        )


def normalize_english(text: str) -> str:
    """Whisper's English text normaliser: lower case, no punctuation, numbers and spellings unified."""
    return str(_normalizer()(text))


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[float, list[float]]:
    """Word error rate in percent over the corpus, and per pair, after Whisper's normaliser.

    The corpus figure counts errors over all words (jiwer's `wer` on the lists), not the mean of
    the pairs'. A reference that normalises to nothing is scored against the empty string only in
    the corpus count (jiwer refuses an empty reference alone): its pair gets `nan`.
    """
    jiwer = require("jiwer")
    refs = [normalize_english(r) for r in references]
    hyps = [normalize_english(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    if not pairs:
        return float("nan"), [float("nan")] * len(refs)
    corpus = 100.0 * float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
    each = [
        100.0 * float(jiwer.wer(r, h)) if r.strip() else float("nan")
        for r, h in zip(refs, hyps, strict=True)
    ]
    return corpus, each


def cider(
    references: Sequence[Sequence[str]], candidates: Sequence[str]
) -> tuple[float, list[float]]:
    """CIDEr-D as the COCO caption evaluation computes it, over the set and per candidate.

    Args:
        references: the human captions of each item (COCO: five).
        candidates: the generated caption of each item.

    Raises:
        PluginError: pycocoevalcap is not installed, or no `java` to run its PTB tokeniser.
    """
    tokenizer_module = require("pycocoevalcap.tokenizer.ptbtokenizer")
    cider_module = require("pycocoevalcap.cider.cider")
    require_java()
    tokenizer = tokenizer_module.PTBTokenizer()
    gts = tokenizer.tokenize(
        {i: [{"caption": c} for c in refs] for i, refs in enumerate(references)}
    )
    res = tokenizer.tokenize({i: [{"caption": c}] for i, c in enumerate(candidates)})
    value, each = cider_module.Cider().compute_score(gts, res)
    return 100.0 * float(value), [100.0 * float(x) for x in each]
