"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anygpt_core.errors import (
    AnyGPTError,
    CheckpointError,
    ConfigError,
    DeadlineError,
    EngineUnavailableError,
    GenerationError,
    InputError,
    PluginError,
    first_line,
)

__all__ = ["APIError", "from_anygpt", "payload"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered to the client: status, one-line message, OpenAI's `type`/`param`/`code`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return payload(self.message, self.type, param=self.param, code=self.code)


def payload(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error body in OpenAI's shape; a lone surrogate a client sent is shown escaped."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def from_anygpt(err: AnyGPTError, names: Mapping[Path, str] | None = None) -> APIError:
    """The HTTP error of one of the core's errors: the client's fault is 4xx, the model's 5xx.

    `names` calls each file the server keeps for a request what the request called it (the
    message never shows a server path).
    """
    message = first_line(err)
    for path, what in (names or {}).items():
        message = message.replace(str(path), what)
    if isinstance(err, EngineUnavailableError):
        return APIError(503, message, code="engine_unavailable", headers={"retry-after": "5"})
    if isinstance(err, PluginError):
        return APIError(400, message, code="modality_unavailable")
    if isinstance(err, (InputError, ConfigError)):
        return APIError(400, message, code="invalid_value")
    if isinstance(err, DeadlineError):
        return APIError(504, message, code="timeout")
    if isinstance(err, GenerationError):
        return APIError(500, message, code="generation_failed")
    if isinstance(err, CheckpointError):
        return APIError(500, message, code="checkpoint_error")
    return APIError(500, message)
