"""A toy third-party modality used by the tests: numbers in [-1, 1] as 2 RVQ codebooks of 16.

It is registered through a real `anygpt` entry point (see `conftest.py`), like any plugin.
"""

from __future__ import annotations

import json
from pathlib import Path

from anygpt_core import (
    CodecOption,
    DecodingConfig,
    InputError,
    Instructions,
    ModalitySpec,
    hookimpl,
)
from anygpt_core.spec import save_suffix

LEVELS = 16


class ToyCodec:
    """Two-stage residual quantiser of a 1-D signal; `step` comes from a JSON "checkpoint"."""

    loads = 0

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.step: float | None = None

    def _load(self) -> float:
        if self.step is None:
            if self.path is None:
                raise InputError("toy codec: pass --toy-codec-path")
            ToyCodec.loads += 1
            self.step = float(json.loads(Path(self.path).read_text())["step"])
        return self.step

    def encode(self, source):
        import torch

        step = self._load()
        if isinstance(source, Path):
            try:
                values = [float(x) for x in source.read_text().split()]
            except ValueError as err:
                raise InputError(f"{source}: not a list of numbers") from err
            if not values:
                raise InputError(f"{source}: empty file")
            x = torch.tensor(values)
        else:
            x = torch.as_tensor(source, dtype=torch.float32)
        coarse = ((x.clamp(-1, 1) + 1) / 2 * (LEVELS - 1)).round().long()
        residual = x - (coarse.float() / (LEVELS - 1) * 2 - 1)
        fine = ((residual / step) + LEVELS / 2).round().clamp(0, LEVELS - 1).long()
        return torch.stack([coarse, fine])

    def decode(self, codes, *, condition=None, seed=None, config=None):
        if condition is not None:
            raise InputError("toy codec takes no condition file")
        step = self._load()
        return codes[0].float() / (LEVELS - 1) * 2 - 1 + (codes[1].float() - LEVELS / 2) * step

    def save(self, media, target, *, suffix=None):
        save_suffix(target, suffix)  # any suffix is text, but a file object must name one
        data = " ".join(f"{v:.4f}" for v in media.tolist()).encode()
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(data)
        else:
            target.write(data)


def _factory(options):
    return ToyCodec(options.get("toy_codec_path"))


TOY = ModalitySpec(
    name="toy",
    prefix="🧪",
    start="<soty>",
    end="<eoty>",
    codebook_size=LEVELS,
    num_codebooks=2,
    frame_rate=10.0,
    max_frames=40,
    decoding=DecodingConfig(top_k=8, max_new_tokens=60),
    input_extensions=(".txt",),
    output_extension=".txt",
    instructions=Instructions(
        to_text=("Describe this series in words.", "What does this signal show?"),
        from_text=("Draw this description as a series.", "Turn this text into a signal."),
    ),
    options=(CodecOption(name="toy_codec_path", help="Toy codec JSON.", type="path"),),
    codec_factory=_factory,
    description="A toy signal modality for tests.",
)


@hookimpl
def anygpt_modalities():
    return [TOY]


@hookimpl
def anygpt_demo_assets(directory):
    path = Path(directory) / "toy_codec.json"
    path.write_text(json.dumps({"step": 1 / (LEVELS - 1) / LEVELS * 2}))
    return {"toy_codec_path": str(path)}
