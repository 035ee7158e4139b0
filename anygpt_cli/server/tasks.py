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

import asyncio
import base64
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from anygpt_cli.server.errors import APIError, from_anygpt
from anygpt_cli.server.media import decode_base64
from anygpt_cli.server.schemas import SEED_MAX
from anygpt_core.errors import AnyGPTError

if TYPE_CHECKING:
    from anygpt_cli.server.service import Service

__all__ = ["TaskRequest", "add_task_route"]


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


def add_task_route(app: FastAPI, service: Service) -> None:
    """Add `POST /v1/anygpt/tasks` to the app."""

    @app.post("/v1/anygpt/tasks", response_model=None)
    async def run_task(body: TaskRequest, request: Request) -> JSONResponse:
        from anygpt_cli.server.service import _seed

        service.check_model(body.model)
        if (body.source == "text") != (body.input is not None):
            raise APIError(
                400, "give input for a text source, input_media otherwise", param="input"
            )
        if body.source != "text" and body.input_media is None:
            raise APIError(400, f"input_media: a {body.source} file is needed", param="input_media")
        from anygpt_core.config import DecodingConfig

        fields = set(DecodingConfig.model_fields) | service.gpt.plugins.decoding_fields()
        for name in body.decoding:
            if name not in fields:
                raise APIError(400, f"decoding.{name}: unknown field", param=f"decoding.{name}")
        seed = _seed(body.seed)
        cancel = threading.Event()
        job = asyncio.ensure_future(_in_thread(lambda: _answer(service, body, seed, cancel)))
        try:
            while True:
                done, _ = await asyncio.wait({job}, timeout=0.25)
                if done:
                    return JSONResponse(job.result())
                if await request.is_disconnected():
                    cancel.set()
        finally:
            cancel.set()


async def _in_thread(func: Callable[[], Any]) -> Any:  # noqa: ANN401
    return await asyncio.get_running_loop().run_in_executor(None, func)


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


def _named(err: AnyGPTError, names: dict[Path | None, str]) -> APIError:
    """The HTTP error of `err`, each upload called what the request called it (no server path)."""
    api = from_anygpt(err)
    for path, what in names.items():
        if path is not None:
            api.message = api.message.replace(str(path), what)
    return api


def _answer(
    service: Service, body: TaskRequest, seed: int, cancel: threading.Event
) -> dict[str, Any]:
    from anygpt_core.tasks import Task

    with (
        _upload(service, body.source, body.input_media, "input_media") as source,
        _upload(service, body.target, body.condition_media, "condition_media") as condition,
    ):
        payload = body.input if source is None else str(source)
        task = Task(body.source, body.target, payload or "", str(condition) if condition else None)
        names = {p: what for p, what in ((source, "input_media"), (condition, "condition_media"))}
        try:
            prepared = service.gpt.prepare(
                task, seed=seed, config=service.settings.config, **body.decoding
            )
        except AnyGPTError as err:
            raise _named(err, names) from err
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
