"""The paper's speech evaluations: ASR on LibriSpeech test-clean, zero-shot TTS on VCTK.

- `librispeech-asr`: every utterance of `test-clean/SPEAKER/CHAPTER/*.flac` with its line of the
  chapter's `*.trans.txt`; WER (%) after Whisper's English normaliser. Paper: 8.5.
- `vctk-tts`: per speaker, a random 3 s clip of one utterance is the voice prompt, and
  `UTTERANCES_PER_SPEAKER` other utterances' texts are read in that voice. WER (%) of Whisper
  medium's transcript of the speech against the text, and SIM, the cosine of WavLM x-vectors
  (`microsoft/wavlm-base-plus-sv`) of the speech and the prompt. Paper: 8.5 and 0.77. The paper
  does not say how many utterances per speaker it read.

Both also read the Hugging Face data sets (`openslr/librispeech_asr`, config `clean`, split `test`;
`CSTR-Edinburgh/vctk`): the same samples, ids and order as from the files.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anygpt_core.errors import InputError
from anygpt_core.evaluation.data import cut_clip, find_folder, mean_of, read_waves, require_dir
from anygpt_core.evaluation.hub import HubData, column, load_split, media_file
from anygpt_core.evaluation.metrics import WER, wer
from anygpt_core.evaluation.task import EvalTask, LoadContext, Metric, Record, Sample, Scored
from anygpt_core.tasks import Task

if TYPE_CHECKING:
    from datasets import Dataset

    from anygpt_core.evaluation.scorers import Scorers

__all__ = ["LIBRISPEECH_ASR", "UTTERANCES_PER_SPEAKER", "VCTK_TTS"]

#: VCTK utterances read per speaker (the paper leaves it unstated): 108 speakers x 5 = 540.
UTTERANCES_PER_SPEAKER = 5
#: The voice prompt's length (the paper: 3 s) and the rate clips are written at.
PROMPT_SECONDS = 3.0
#: The shortest answer a speaker embedding is computed for (WavLM's x-vector needs about 0.3 s).
MIN_SIM = 0.5
_RATE = 16_000

_LIBRISPEECH = "LibriSpeech's test-clean/SPEAKER/CHAPTER/*.flac + *.trans.txt tree"
_VCTK = "VCTK's wav48_silence_trimmed (or wav48) and txt trees"

#: Hub data sets the tasks know, with the config and split that are the paper's set; another id is
#: read with its default config, split `test` (LibriSpeech) or `train` (VCTK, which has no other).
_LIBRISPEECH_HUB = {"openslr/librispeech_asr": ("clean", "test")}
_VCTK_HUB = {"CSTR-Edinburgh/vctk": (None, "train")}

#: An utterance's audio, fetched only when it is used (a hub row's bytes are written out then).
_Audio = Callable[[], "Path | None"]


def load_librispeech(path: Path, context: LoadContext) -> list[Sample]:
    """Every test-clean utterance with its transcript, in path order.

    Raises:
        InputError: no test-clean folder, or no `*.trans.txt` under it.
    """
    del context  # nothing is derived from LibriSpeech's files
    root = require_dir(path, _LIBRISPEECH)
    split = find_folder(root, ["test-clean"]) or find_folder(root / "LibriSpeech", ["test-clean"])
    if split is None:
        raise InputError(f"{root}: no test-clean folder; expected {_LIBRISPEECH}")
    listings = sorted(split.rglob("*.trans.txt"))
    if not listings:
        raise InputError(f"{root}: no *.trans.txt under test-clean")
    samples = []
    for listing in listings:
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"{listing}: unreadable transcript list ({err})") from err
        for line in lines:
            utterance, _, text = line.strip().partition(" ")
            if not utterance or not text:
                continue
            audio = listing.parent / f"{utterance}.flac"
            samples.append(Sample(utterance, Task("speech", "text", str(audio)), text.strip()))
    return samples


def load_librispeech_hub(data: HubData, context: LoadContext) -> list[Sample]:
    """Every utterance of a hub LibriSpeech split with its transcript, in id order (as the tree's).

    Each row's audio is written once under `context.workdir/hub/` for the model to read.

    Raises:
        InputError: no audio or transcript column.
        CheckpointError: not cached when offline, or not downloadable.
    """
    config, split = _LIBRISPEECH_HUB.get(data.repo_id, (None, "test"))
    rows = load_split(data, split, config=config)
    audio = column(rows, ["audio"], data=data, what="audio")
    text = column(rows, ["text", "transcript", "sentence"], data=data, what="transcript")
    ident = next((c for c in ("id", "utterance_id") if c in rows.column_names), None)
    samples = []
    for index, row in enumerate(rows):
        cell = row[audio]
        name = str(row[ident]) if ident else Path(str((cell or {}).get("path") or index)).stem
        path = media_file(cell, context.workdir / "hub", name, suffix=".flac")
        payload = str(path) if path is not None else f"{data} row {index} (no audio)"
        samples.append(Sample(name, Task("speech", "text", payload), str(row[text]).strip()))
    return sorted(samples, key=lambda sample: sample.id)


def score_asr(records: Sequence[Record], scorers: Scorers) -> Scored:
    """Corpus WER (%) of the answers against the transcripts, after Whisper's normaliser."""
    del scorers  # the model's own text is scored
    corpus, each = wer([r.sample.reference for r in records], [r.text for r in records])
    return Scored({"WER": corpus}, [{"WER": w} for w in each])


def load_vctk(path: Path, context: LoadContext) -> list[Sample]:
    """Per speaker: a prompt clip of one utterance, and other utterances' texts to read in it.

    The choices are seeded by `context.seed` and the speaker, so they do not depend on which
    speakers the folder holds; clips are written once under `context.workdir`.

    Raises:
        InputError: no audio tree, no `txt` tree, or no speaker with two usable utterances.
    """
    root = require_dir(path, _VCTK)
    audio_root = find_folder(root, ["wav48_silence_trimmed", "wav48"])
    if audio_root is None:
        raise InputError(f"{root}: no wav48_silence_trimmed or wav48 folder; expected {_VCTK}")
    text_root = find_folder(root, ["txt"])
    if text_root is None:
        raise InputError(f"{root}: no txt folder; expected {_VCTK}")
    speakers = {
        speaker_dir.name: _vctk_utterances(speaker_dir, audio_root / speaker_dir.name)
        for speaker_dir in sorted(p for p in text_root.iterdir() if p.is_dir())
    }
    samples = _vctk_samples(speakers, context)
    if not samples:
        raise InputError(f"{root}: no speaker with two utterances that have audio and text")
    return samples


def load_vctk_hub(data: HubData, context: LoadContext) -> list[Sample]:
    """`load_vctk` on a hub VCTK: rows of speaker, text and audio (mic1 kept where both mics are).

    Only the prompts' audio is written out (under `context.workdir/hub/`): the other utterances
    are read as text.

    Raises:
        InputError: no speaker, text or audio column, or no speaker with two utterances.
        CheckpointError: not cached when offline, or not downloadable.
    """
    config, split = _VCTK_HUB.get(data.repo_id, (None, "train"))
    rows = load_split(data, split, config=config)
    audio = column(rows, ["audio"], data=data, what="audio")
    speaker_column = column(rows, ["speaker_id", "speaker"], data=data, what="speaker")
    text = column(rows, ["text", "transcript", "sentence"], data=data, what="text")
    named = [c for c in ("text_id", "file") if c in rows.column_names]
    table = rows.select_columns([speaker_column, text, *named]).to_list()
    paths = [(cell or {}).get("path") for cell in rows.select_columns([audio])[audio]]
    speakers: dict[str, dict[str, tuple[_Audio, str]]] = {}
    mic1: set[str] = set()
    for index, row in enumerate(table):
        speaker, words = str(row[speaker_column]), str(row[text] or "").strip()
        source = str(row.get("file") or paths[index] or "")
        stem = re.sub(r"_mic\d$", "", Path(source).stem)
        name = f"{speaker}_{row['text_id']}" if row.get("text_id") else stem or f"{speaker}_{index}"
        if not words or (name in mic1):
            continue
        if source.endswith("_mic1.flac"):
            mic1.add(name)
        speakers.setdefault(speaker, {})[name] = (_row_audio(rows, index, audio, context), words)
    samples = _vctk_samples(dict(sorted(speakers.items())), context)
    if not samples:
        raise InputError(f"{data}: no speaker with two utterances that have text")
    return samples


def _row_audio(rows: Dataset, index: int, audio: str, context: LoadContext) -> _Audio:
    """The audio of hub row `index`, written under the workdir when first asked for."""

    def fetch() -> Path | None:
        cell = rows[index][audio]
        return media_file(cell, context.workdir / "hub", f"row{index}", suffix=".flac")

    return fetch


def _vctk_samples(
    speakers: Mapping[str, Mapping[str, tuple[_Audio, str]]], context: LoadContext
) -> list[Sample]:
    """Per speaker (in the given order): a seeded prompt clip and the texts of others to read."""
    samples = []
    for speaker, utterances in speakers.items():
        if len(utterances) < 2:
            continue
        rng = random.Random(f"{context.seed}:{speaker}")
        names = sorted(utterances)
        prompt_name = rng.choice(names)
        prompt_audio = utterances[prompt_name][0]()
        target = context.workdir / "prompts" / f"{prompt_name}.wav"
        clip = cut_clip(
            prompt_audio if prompt_audio is not None else target.with_suffix(".missing"),
            target,
            seconds=PROMPT_SECONDS,
            sample_rate=_RATE,
            rng=rng,
        )
        others = [n for n in names if n != prompt_name]
        for name in sorted(rng.sample(others, min(UTTERANCES_PER_SPEAKER, len(others)))):
            _, text = utterances[name]
            samples.append(
                Sample(
                    name,
                    Task("text", "speech", text, str(clip)),
                    text,
                    {"speaker": speaker, "prompt": str(clip)},
                )
            )
    return samples


def _vctk_utterances(text_dir: Path, audio_dir: Path) -> dict[str, tuple[_Audio, str]]:
    """Utterance -> (its audio file, text) of one speaker: mic1 flac, else mic2, else the old wav."""
    found: dict[str, tuple[_Audio, str]] = {}
    for listing in sorted(text_dir.glob("*.txt")):
        name = listing.stem
        for candidate in (f"{name}_mic1.flac", f"{name}_mic2.flac", f"{name}.wav", f"{name}.flac"):
            audio = audio_dir / candidate
            if audio.is_file():
                break
        else:
            continue
        try:
            text = listing.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            found[name] = (lambda audio=audio: audio, text)  # type: ignore[misc]
    return found


def score_tts(records: Sequence[Record], scorers: Scorers) -> Scored:
    """WER (%) of Whisper's transcripts of the speech, and SIM of the speech to its voice prompt.

    An answer without speech (its span never closed) transcribes as nothing: all its words count
    as deleted, and it has no SIM; nor has an answer shorter than `MIN_SIM` seconds.
    """
    spoken = [r for r in records if r.files]
    speech = read_waves([r.files[0] for r in spoken], _RATE)
    heard = dict(zip((id(r) for r in spoken), scorers.transcribe(speech, _RATE), strict=True))
    # a speaker embedding needs some speech: an answer shorter than MIN_SIM s has no SIM
    voiced = [(r, w) for r, w in zip(spoken, speech, strict=True) if len(w) >= MIN_SIM * _RATE]
    prompts = read_waves([Path(r.sample.extra["prompt"]) for r, _ in voiced], _RATE)
    similarity = scorers.speaker_similarity([w for _, w in voiced], prompts, _RATE)
    similar = dict(zip((id(r) for r, _ in voiced), similarity, strict=True))
    transcripts = [heard.get(id(r), "") for r in records]
    corpus, each = wer([r.sample.reference for r in records], transcripts)
    sims = [similar.get(id(r), math.nan) for r in records]
    values = {"WER": corpus, "SIM": mean_of(sims)}
    return Scored(values, [{"WER": w, "SIM": s} for w, s in zip(each, sims, strict=True)])


LIBRISPEECH_ASR = EvalTask(
    name="librispeech-asr",
    modality="speech",
    source="speech",
    target="text",
    metrics=(Metric("WER", paper=8.5, lower_is_better=True, unit="%"),),
    description="ASR on LibriSpeech test-clean: WER after Whisper's English normaliser",
    data=_LIBRISPEECH,
    load=load_librispeech,
    score=score_asr,
    libraries=WER,
    load_hub=load_librispeech_hub,
    hub_ids=tuple(_LIBRISPEECH_HUB),
)

VCTK_TTS = EvalTask(
    name="vctk-tts",
    modality="speech",
    source="text",
    target="speech",
    metrics=(
        Metric("WER", paper=8.5, lower_is_better=True, unit="%"),
        Metric("SIM", paper=0.77),
    ),
    description="zero-shot TTS on VCTK with 3 s voice prompts: Whisper-medium WER, WavLM SIM",
    data=_VCTK,
    load=load_vctk,
    score=score_tts,
    scorers=("whisper", "wavlm-sv"),
    libraries=WER,
    load_hub=load_vctk_hub,
    hub_ids=tuple(_VCTK_HUB),
)
