"""Tiny data sets in the published layouts of the paper's evaluation sets (synthetic tones, PIL images)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "LIBRI_TEXTS",
    "write_coco",
    "write_hub_dataset",
    "write_librispeech",
    "write_musiccaps",
    "write_vctk",
]

LIBRI_TEXTS = {
    "1089-134686-0000": "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS",
    "1089-134686-0001": "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
    "1089-134686-0002": "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP HERE AND THERE",
    "1089-134686-0003": "HELLO BERTIE ANY GOOD IN YOUR MIND",
    "1089-134686-0004": "NUMBER TEN FRESH NELLY IS WAITING ON YOU GOOD NIGHT HUSBAND",
    "1089-134686-0005": "THE MUSIC CAME NEARER AND HE RECALLED THE WORDS",
}


def tone(seconds: float, rate: int, freq: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


def write_librispeech(root: Path, count: int = len(LIBRI_TEXTS)) -> Path:
    """`root/LibriSpeech/test-clean/1089/134686/*.flac` + the chapter's `.trans.txt`."""
    chapter = root / "LibriSpeech" / "test-clean" / "1089" / "134686"
    chapter.mkdir(parents=True, exist_ok=True)
    items = list(LIBRI_TEXTS.items())[:count]
    for i, (utterance, _) in enumerate(items):
        sf.write(chapter / f"{utterance}.flac", tone(0.6 + 0.1 * i, 16000, 200 + 40 * i, i), 16000)
    lines = [f"{u} {t}" for u, t in items]
    (chapter / "1089-134686.trans.txt").write_text("\n".join(lines) + "\n")
    return root / "LibriSpeech"


def write_vctk(root: Path, speakers: int = 2, utterances: int = 3) -> Path:
    """`root/wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac` + `root/txt/pXXX/pXXX_NNN.txt`."""
    words = ["please call stella", "ask her to bring these things", "six spoons of fresh snow peas"]
    for s in range(speakers):
        speaker = f"p{225 + s}"
        (root / "wav48_silence_trimmed" / speaker).mkdir(parents=True, exist_ok=True)
        (root / "txt" / speaker).mkdir(parents=True, exist_ok=True)
        for u in range(utterances):
            name = f"{speaker}_{u + 1:03d}"
            wave = tone(3.5, 48000, 150 + 50 * s + 10 * u, s * 10 + u)
            sf.write(root / "wav48_silence_trimmed" / speaker / f"{name}_mic1.flac", wave, 48000)
            (root / "txt" / speaker / f"{name}.txt").write_text(words[u % len(words)] + "\n")
    return root


def write_musiccaps(root: Path, count: int = 3) -> Path:
    """`root/musiccaps-public.csv` + `root/clips/{ytid}.wav` (10 s clips at 44.1 kHz)."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    captions = ["a calm piano melody", "loud electric guitar riffs", "a slow jazz trio"]
    with (root / "musiccaps-public.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "ytid",
                "start_s",
                "end_s",
                "audioset_positive_labels",
                "aspect_list",
                "caption",
                "author_id",
                "is_balanced_subset",
                "is_audioset_eval",
            ]
        )
        for i in range(count):
            ytid = f"clip{i:02d}xyz"
            writer.writerow([ytid, 30, 40, "", "[]", captions[i % 3], 1, False, True])
            sf.write(root / "clips" / f"{ytid}.wav", tone(10.0, 44100, 220 + 60 * i, i), 44100)
    return root


def write_coco(root: Path, test_images: int = 2, val_images: int = 3) -> Path:
    """Karpathy's `dataset_coco.json`, `val2014/*.jpg` and COCO's `annotations/captions_val2014.json`."""
    from PIL import Image

    (root / "val2014").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, notes, karpathy = [], [], []
    for i in range(test_images + val_images):
        name = f"COCO_val2014_{i:012d}.jpg"
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "val2014" / name)
        sentences = [
            f"a picture number {i} of a {w}" for w in ("dog", "cat", "bus", "tree", "boat")
        ]
        split = "test" if i < test_images else "val"
        karpathy.append(
            {
                "filepath": "val2014",
                "filename": name,
                "cocoid": 1000 + i,
                "split": split,
                "sentences": [{"raw": s} for s in sentences],
            }
        )
        images.append({"id": 1000 + i, "file_name": name})
        notes += [
            {"image_id": 1000 + i, "id": 10 * i + k, "caption": s} for k, s in enumerate(sentences)
        ]
    (root / "dataset_coco.json").write_text(json.dumps({"images": karpathy}))
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"images": images, "annotations": notes})
    )
    return root


def write_hub_dataset(
    cache: Path,
    repo_id: str,
    rows: dict[str, list],
    *,
    split: str,
    config: str | None = None,
    media: dict[str, str] | None = None,
) -> None:
    """Put a tiny data set into the `datasets` cache `cache` as if `repo_id` had been loaded online.

    The rows are written as the repository would hold them (a parquet file per split, the configs
    in its README), loaded once from that folder by `datasets`, and the prepared cache is moved
    under the hub id's name (`owner___name`), where an offline `load_dataset(repo_id)` finds it.
    `media` names the columns holding `{"bytes", "path"}` cells: `audio` or `image`.
    """
    import shutil
    import tempfile

    import datasets
    from datasets.naming import camelcase_to_snakecase

    datasets.disable_progress_bars()
    owner, name = repo_id.split("/")
    table = datasets.Dataset.from_dict(rows)  # a media cell {"bytes", "path"} is a struct here
    for key, kind in (media or {}).items():  # cast, not encoded: encoding audio needs torchcodec
        feature = datasets.Audio() if kind == "audio" else datasets.Image()
        table = table.cast_column(key, feature)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / name
        folder = config or "data"
        (repo / folder).mkdir(parents=True)
        table.to_parquet(str(repo / folder / f"{split}-00000-of-00001.parquet"))
        (repo / "README.md").write_text(
            f"---\nconfigs:\n- config_name: {config or 'default'}\n  data_files:\n"
            f"  - split: {split}\n    path: {folder}/{split}-*\n---\n"
        )
        datasets.load_dataset(str(repo), config, split=split, cache_dir=str(cache))
    snake = camelcase_to_snakecase(name)
    target = cache / f"{owner}___{snake}"
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(cache / snake), str(target))
