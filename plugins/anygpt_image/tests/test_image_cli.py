"""End to end through the core's `anygpt` command (encode, decode, run on the embedded demo)."""

import json

import pytest
from PIL import Image

from anygpt_core.testing import run_cli


def _flags(options):
    return [
        "--image-tokenizer-path", options["image_tokenizer_path"],
        "--image-vit-path", options["image_vit_path"],
        "--image-decoder-path", options["image_decoder_path"],
        "--image-steps", "2",
        "--image-device", "cpu",
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def _only_image(monkeypatch):
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "image")


def test_cli_encode_then_decode(demo_options, picture_path, tmp_path, capsys):
    code, out, err = run_cli(["encode", "image", str(picture_path), *_flags(demo_options)], capsys)
    assert code == 0, err
    span = out.strip()
    assert span.startswith("<soim><👀")
    assert span.endswith("<eoim>")
    assert span.count("<👀") == 32
    target = tmp_path / "out.jpg"
    args = ["decode", "image", span, "-o", str(target), "--seed", "3", *_flags(demo_options)]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    with Image.open(target) as decoded:
        assert decoded.format == "JPEG"


def test_cli_decode_rejects_short_span(demo_options, tmp_path, capsys):
    span = "<soim>" + "<👀1>" * 31 + "<eoim>"
    args = ["decode", "image", span, "-o", str(tmp_path / "x.jpg"), *_flags(demo_options)]
    code, _, err = run_cli(args, capsys)
    assert code != 0
    assert err.startswith("Error: ")
    assert len(err.strip().splitlines()) == 1


def test_cli_encode_reports_non_image(demo_options, tmp_path, capsys):
    path = tmp_path / "words.png"
    path.write_text("no pixels here")
    code, _, err = run_cli(["encode", "image", str(path), *_flags(demo_options)], capsys)
    assert code == 3
    assert err == f"Error: {path}: not an image PIL can read (PNG, JPEG, WebP, ...)\n"


@pytest.mark.slow
def test_cli_run_text_to_image_and_caption_on_demo(picture_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ANYGPT_HOME", str(tmp_path / "home"))
    out_dir = tmp_path / "out"
    tasks = ["text|image|a red bus", f"image|text|{picture_path}"]
    args = [
        "run",
        *tasks,
        "--seed",
        "0",
        "--json",
        "--output-dir",
        str(out_dir),
        "--image-steps",
        "2",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 2
    written = list(out_dir.glob("*.jpg"))
    assert len(written) == 1
    with Image.open(written[0]) as picture:
        assert picture.size == (32, 32)
    png = ["run", tasks[0], "--seed", "0", "--json", "--output-dir", str(tmp_path / "png")]
    code, out, err = run_cli([*png, "--image-steps", "2", "--image-format", "png"], capsys)
    assert code == 0, err
    (path,) = json.loads(out)["files"]
    assert path.endswith(".png")
    with Image.open(path) as picture:
        assert picture.format == "PNG"
    code, _, err = run_cli([*png, "--image-format", "gif"], capsys)
    assert code == 6
    assert (
        err.strip().splitlines()[-1] == "Error: --image-format gif: Value error, choose jpg or png"
    )
    assert list((tmp_path / "png").iterdir()) == [tmp_path / "png" / path.split("/")[-1]]
