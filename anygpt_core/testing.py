"""Test helpers for plugins: the codec contract check, and the `anygpt` command run in-process.

```python
from anygpt_core.testing import check_codec_contract

def test_music_codec_contract(tiny_music_dir, tmp_path, some_wav):
    check_codec_contract(MUSIC, {"music_tokenizer_path": str(tiny_music_dir)}, some_wav, tmp_path)
```
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anygpt_core.protocol import codes_to_string, string_to_codes
from anygpt_core.spec import Codec, ModalitySpec

__all__ = ["check_codec_contract", "run_cli"]


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
