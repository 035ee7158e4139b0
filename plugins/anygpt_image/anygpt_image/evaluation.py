"""The paper's image evaluations on MS-COCO 2014.

- `coco-caption`: the 5,000 images of the Karpathy test split, captioned; CIDEr against their five
  human captions (pycocoevalcap, PTB tokenisation). Paper: 107.5.
- `coco-t2i`: `T2I_SAMPLES` images of val2014 drawn with the seed, one of each image's captions
  (also drawn) turned into an image; CLIP score, the cosine of CLIP ViT-L/14's embeddings of the
  image and the caption. Paper: 0.65. We also report CLIP-I, the generated image against the
  original (the comparison SEED-LLaMA's 0.69 beside it in the paper's table is made with).

Data: a folder with Karpathy's `dataset_coco.json` and the image folders it names (`val2014/`);
for `coco-t2i`, COCO's own `annotations/captions_val2014.json` is read when present. Or a Hugging
Face data set: `yerevann/coco-karpathy` (Karpathy's captions; the images from a local folder,
`yerevann/coco-karpathy:FOLDER`) or one that holds the images
(`nlphuji/mscoco_2014_5k_test_image_text_retrieval`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.errors import InputError
from anygpt_core.evaluation.data import mean_of, require_dir
from anygpt_core.evaluation.hub import HubData, column, load_split, media_file
from anygpt_core.evaluation.metrics import CIDER, cider
from anygpt_core.evaluation.task import EvalTask, LoadContext, Metric, Record, Sample, Scored
from anygpt_core.tasks import Task

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL import Image

    from anygpt_core.evaluation.scorers import Scorers

__all__ = ["COCO_CAPTION", "COCO_T2I", "T2I_SAMPLES"]

#: Captions drawn from val2014 for text to image (the paper: 30k).
T2I_SAMPLES = 30_000
_KARPATHY = "Karpathy's dataset_coco.json and the COCO 2014 image folders it names (val2014/)"
_VAL_CAPTIONS = Path("annotations") / "captions_val2014.json"

#: Hub data sets of the Karpathy split: the first names its images (a local folder gives them),
#: the second holds the 5,000 test images. Another id is read from its `test` split.
_COCO_HUB = ("yerevann/coco-karpathy", "nlphuji/mscoco_2014_5k_test_image_text_retrieval")
_CAPTIONS = ("sentences", "captions", "caption", "answer")
_IMAGE_IDS = ("cocoid", "image_id", "imgid", "id", "filename", "file_name")


def _read_json(path: Path) -> Any:  # noqa: ANN401 - JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: unreadable JSON ({err})") from err


def _karpathy(root: Path) -> list[Mapping[str, Any]]:
    table = root / "dataset_coco.json"
    if not table.is_file():
        raise InputError(f"{root}: no dataset_coco.json; expected {_KARPATHY}")
    data = _read_json(table)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise InputError(f"{table}: no images list; not Karpathy's dataset_coco.json")
    return images


def _captions(entry: Mapping[str, Any]) -> list[str]:
    return [str(s.get("raw", "")).strip() for s in entry.get("sentences", []) if s.get("raw")]


def load_caption(path: Path, context: LoadContext) -> list[Sample]:
    """The Karpathy test split's images with their human captions, in the file's order.

    Raises:
        InputError: no `dataset_coco.json`, or it holds no test image.
    """
    del context
    root = require_dir(path, _KARPATHY)
    samples = []
    for entry in _karpathy(root):
        if entry.get("split") != "test":
            continue
        image = root / str(entry.get("filepath", "")) / str(entry.get("filename", ""))
        ident = str(entry.get("cocoid", entry.get("imgid", entry.get("filename"))))
        samples.append(Sample(ident, Task("image", "text", str(image)), _captions(entry)))
    if not samples:
        raise InputError(f"{root / 'dataset_coco.json'}: no image of the test split")
    return samples


def load_caption_hub(data: HubData, context: LoadContext) -> list[Sample]:
    """The test split of a hub COCO caption set: each image with its captions, in the set's order.

    The image is the row's own (written once under `context.workdir/hub/`) or, for a set that
    only names it (`filepath`, `filename`), the file under the `:FOLDER` given with the id.

    Raises:
        InputError: no captions column, or rows that only name their images and no folder.
        CheckpointError: not cached when offline, or not downloadable.
    """
    rows = load_split(data, "test")
    images = _hub_images(rows, data, context, task="coco-caption")
    captions = column(rows, _CAPTIONS, data=data, what="captions")
    ident = column(rows, _IMAGE_IDS, data=data, what="image id")
    samples = []
    for index, row in enumerate(rows.select_columns([ident, captions]).to_list()):
        image = images(index)
        payload = str(image) if image is not None else f"{data} row {index} (no image)"
        samples.append(
            Sample(str(row[ident]), Task("image", "text", payload), _hub_captions(row[captions]))
        )
    return samples


def _hub_images(
    rows: Dataset, data: HubData, context: LoadContext, *, task: str
) -> Callable[[int], Path | None]:
    """Row index -> its image file: the row's image written out, or the file it names."""
    held = next((c for c in ("image", "jpg", "png") if c in rows.column_names), None)
    if held is not None:
        return lambda index: media_file(
            rows[index][held], context.workdir / "hub", f"row{index}", suffix=".jpg"
        )
    named = next((c for c in ("filename", "file_name") if c in rows.column_names), None)
    if named is None:
        raise InputError(f"{data}: no image column (image, or filename with a folder)")
    if data.folder is None:
        raise InputError(
            f"{data}: its rows name COCO images but hold none; add the folder with them: "
            f"--data {task}={data}:FOLDER (FOLDER/val2014/...)"
        )
    folder = data.folder
    table = rows.select_columns([c for c in ("filepath", named) if c in rows.column_names])
    entries = table.to_list()

    def find(index: int) -> Path:
        entry = entries[index]
        inside = folder / str(entry.get("filepath") or "") / str(entry[named])
        return inside if inside.is_file() else folder / str(entry[named])

    return find


def _hub_captions(value: Any) -> list[str]:  # noqa: ANN401 - a hub cell
    """Captions of a hub cell: a list of strings or of Karpathy's `{"raw": ...}`, or one string."""
    items = value if isinstance(value, list) else [value]
    found = [str(i.get("raw", "")) if isinstance(i, dict) else str(i or "") for i in items]
    return [c.strip() for c in found if c.strip()]


def score_caption(records: Sequence[Record], scorers: Scorers) -> Scored:
    """CIDEr of the captions against the human ones, as the COCO caption evaluation computes it."""
    del scorers
    value, each = cider([r.sample.reference for r in records], [r.text for r in records])
    return Scored({"CIDEr": value}, [{"CIDEr": c} for c in each])


def _val_images(root: Path) -> list[tuple[str, Path, list[str]]]:
    """(image id, file, captions) of val2014: from COCO's annotations, else from Karpathy's file."""
    official = root / _VAL_CAPTIONS
    if official.is_file():
        data = _read_json(official)
        try:
            files = {int(i["id"]): str(i["file_name"]) for i in data["images"]}
            captions: dict[int, list[str]] = {}
            for note in data["annotations"]:
                captions.setdefault(int(note["image_id"]), []).append(str(note["caption"]).strip())
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{official}: not COCO's captions file ({err})") from err
        return [
            (str(i), root / "val2014" / files[i], captions[i])
            for i in sorted(files)
            if captions.get(i)
        ]
    return [
        (
            str(e.get("cocoid", e.get("filename"))),
            root / str(e.get("filepath", "")) / str(e.get("filename", "")),
            _captions(e),
        )
        for e in _karpathy(root)
        if e.get("filepath") == "val2014" and _captions(e)
    ]


def load_t2i(path: Path, context: LoadContext) -> list[Sample]:
    """`T2I_SAMPLES` val2014 images drawn with the seed, one of each one's captions to draw.

    Raises:
        InputError: neither `annotations/captions_val2014.json` nor `dataset_coco.json`, or no
            val2014 image in them.
    """
    root = require_dir(path, f"COCO's {_VAL_CAPTIONS} or {_KARPATHY}")
    if not (root / _VAL_CAPTIONS).is_file() and not (root / "dataset_coco.json").is_file():
        raise InputError(f"{root}: no {_VAL_CAPTIONS} or dataset_coco.json")
    images = _val_images(root)
    if not images:
        raise InputError(f"{root}: no val2014 image with captions")
    rng = random.Random(context.seed)
    chosen = sorted(rng.sample(range(len(images)), min(T2I_SAMPLES, len(images))))
    samples = []
    for index in chosen:
        ident, image, captions = images[index]
        caption = rng.choice(captions)
        samples.append(
            Sample(ident, Task("text", "image", caption), caption, {"image": str(image)})
        )
    return samples


def _open(paths: Sequence[Path]) -> list[Image.Image | None]:
    from PIL import Image, UnidentifiedImageError

    opened: list[Image.Image | None] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                opened.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError):
            opened.append(None)
    return opened


def score_t2i(records: Sequence[Record], scorers: Scorers) -> Scored:
    """CLIP score (image vs caption) of each generated image; CLIP-I (vs the original) where found."""
    made = [r for r in records if r.files]
    drawn = _open([r.files[0] for r in made])
    pairs = [(r, im) for r, im in zip(made, drawn, strict=True) if im is not None]
    text = scorers.clip_text_image([im for _, im in pairs], [r.sample.reference for r, _ in pairs])
    by_text = dict(zip((id(r) for r, _ in pairs), text, strict=True))
    originals = _open([Path(r.sample.extra["image"]) for r, _ in pairs])
    both = [(r, im, o) for (r, im), o in zip(pairs, originals, strict=True) if o is not None]
    image = scorers.clip_image_image([im for _, im, _ in both], [o for _, _, o in both])
    by_image = dict(zip((id(r) for r, _, _ in both), image, strict=True))
    each = [
        {"CLIP score": by_text.get(id(r), math.nan), "CLIP-I": by_image.get(id(r), math.nan)}
        for r in records
    ]
    return Scored(
        {"CLIP score": mean_of(by_text.values()), "CLIP-I": mean_of(by_image.values())}, each
    )


COCO_CAPTION = EvalTask(
    name="coco-caption",
    modality="image",
    source="image",
    target="text",
    metrics=(Metric("CIDEr", paper=107.5),),
    description="image captioning on the MS-COCO 2014 Karpathy test split: CIDEr",
    data=_KARPATHY,
    load=load_caption,
    score=score_caption,
    libraries=CIDER,
    load_hub=load_caption_hub,
    hub_ids=_COCO_HUB,
)

COCO_T2I = EvalTask(
    name="coco-t2i",
    modality="image",
    source="text",
    target="image",
    metrics=(Metric("CLIP score", paper=0.65), Metric("CLIP-I")),
    description="text to image from MS-COCO val2014 captions: CLIP ViT-L/14 score",
    data=f"COCO's {_VAL_CAPTIONS} with val2014/, or {_KARPATHY}",
    load=load_t2i,
    score=score_t2i,
    scorers=("clip",),
)
