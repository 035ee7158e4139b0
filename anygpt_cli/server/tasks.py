"""`POST /v1/anygpt/tasks` (AnyGPT's extension): one base-model task, prompted exactly as `anygpt run`.

OpenAI has no endpoint for "this input, that output modality, these decoding fields", which is what
an evaluation asks; chat completions wrap the input in a conversation. This endpoint runs
`AnyGPT.prepare` on the task as the CLI does, so an answer over HTTP equals the in-process one for
the same seed (`anygpt eval --server` uses it).

Request: `{"model", "source", "target", "input"` (text) or `"input_media": {"data", "format"}`
(base64 file), optional `"condition_media"` (a voice prompt), `"seed"`, `"decoding"` (decoding
config fields)}. Answer: `{"text", "prompt", "media": [{"modality", "format", "data"}], "seed",
"new_tokens", "finish_reason"}`.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from anygpt_cli.server.errors import APIError
from anygpt_cli.server.media import decode_base64
from anygpt_cli.server.schemas import SEED_MAX

if TYPE_CHECKING:
    from anygpt_cli.server.service import Service

__all__ = ["TaskRequest", "answer_task", "check_task"]


class FilePart(BaseModel):
    """A file, base64, with its format (the suffix without a dot: `wav`, `flac`, `png`, ...)."""

    data: str
    format: str


class TaskRequest(BaseModel):
    """`POST /v1/anygpt/tasks`."""

    model_config = ConfigDict(extra="forbid")

    model: str
    source: str = Field(min_length=1, max_length=32)
    target: str = Field(min_length=1, max_length=32)
    input: str | None = Field(None, min_length=1, max_length=100_000)
    input_media: FilePart | None = None
    condition_media: FilePart | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    decoding: dict[str, Any] = Field(default_factory=dict)


def _suffix(service: Service, modality: str, part: FilePart, param: str) -> str:
    """The file suffix of `part`, one the modality reads; 400 naming the ones it does otherwise."""
    spec = service.gpt.codecs.spec(modality)
    suffix = "." + part.format.lower().lstrip(".")
    allowed = spec.input_extensions
    if not suffix[1:].isalnum() or (allowed and suffix not in allowed):
        raise APIError(
            400,
            f"{param}.format: {part.format!r}; {modality} reads {', '.join(allowed)}",
            param=f"{param}.format",
        )
    return suffix


def check_task(service: Service, body: TaskRequest) -> int:
    """Refuse a request that cannot run (400 naming the field) before anything is read; its seed."""
    from anygpt_cli.server.service import _seed
    from anygpt_core.config import DecodingConfig

    service.check_model(body.model)
    if (body.source == "text") != (body.input is not None):
        raise APIError(400, "give input for a text source, input_media otherwise", param="input")
    if body.source != "text" and body.input_media is None:
        raise APIError(400, f"input_media: a {body.source} file is needed", param="input_media")
    fields = set(DecodingConfig.model_fields) | service.gpt.plugins.decoding_fields()
    for name in body.decoding:
        if name not in fields:
            raise APIError(400, f"decoding.{name}: unknown field", param=f"decoding.{name}")
    return _seed(body.seed)


@contextlib.contextmanager
def _upload(
    service: Service, modality: str, part: FilePart | None, param: str
) -> Iterator[Path | None]:
    if part is None:
        yield None
        return
    service.require(modality, param)
    suffix = _suffix(service, modality, part, param)
    data = decode_base64(part.data, param)
    with service.store.file(data, suffix, kind="other", what=param) as path:
        yield path


def answer_task(
    service: Service, body: TaskRequest, seed: int, cancel: threading.Event
) -> dict[str, Any]:
    """Run the task (on a worker thread; `cancel` stops it): the endpoint's answer."""
    from anygpt_core.tasks import Task

    with (
        _upload(service, body.source, body.input_media, "input_media") as source,
        _upload(service, body.target, body.condition_media, "condition_media") as condition,
    ):
        payload = body.input if source is None else str(source)
        task = Task(body.source, body.target, payload or "", str(condition) if condition else None)
        uploads = ((source, "input_media"), (condition, "condition_media"))
        names = {path: what for path, what in uploads if path is not None}
        prepared = service.prepare(task, seed, names=names, **body.decoding)
        result = service.run_tasks([prepared], cancel)[0]
        media = [
            {
                "modality": m.modality,
                "format": m.suffix.lstrip("."),
                "data": base64.b64encode(m.data()).decode("ascii"),
            }
            for m in result.media
        ]
    return {
        "text": result.text,
        "prompt": result.prompt,
        "media": media,
        "seed": seed,
        "new_tokens": result.new_tokens,
        "finish_reason": result.finish_reason,
    }
