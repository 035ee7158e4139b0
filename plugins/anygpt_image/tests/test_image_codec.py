import io
from pathlib import Path

import numpy as np
import pytest
import torch
from anygpt_image.codec import ImageCodec
from anygpt_image.plugin import IMAGE
from anygpt_image.preprocess import to_pixels
from image_helpers import smooth_picture
from PIL import Image

from anygpt_core.errors import ConfigError, GenerationError, InputError


def test_factory_loads_no_weights(demo_options):
    codec = ImageCodec(demo_options)
    assert not codec.is_loaded("seed")
    assert not codec.is_loaded("seed decoder")
    assert not codec.is_loaded("pipeline")


def test_encode_returns_32_codes(codec, picture_path):
    codes = codec.encode(picture_path)
    assert codes.shape == (1, 32)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0
    assert int(codes.max()) < 8192


def test_file_and_array_inputs_give_same_codes(codec, picture_path):
    from_file = codec.encode(picture_path)
    array = np.array(Image.open(picture_path).convert("RGB"))
    assert torch.equal(codec.encode(array), from_file)
    assert torch.equal(codec.encode(torch.from_numpy(array).permute(2, 0, 1)), from_file)
    assert torch.equal(codec.encode(array.astype(np.float32) / 255.0), from_file)
    assert torch.equal(codec.encode(str(picture_path)), from_file)


def test_codes_are_not_degenerate(codec):
    codes = torch.cat([codec.encode(np.asarray(smooth_picture(seed))) for seed in range(1, 5)])
    assert len(set(codes.flatten().tolist())) >= 64
    assert len({tuple(row) for row in codes.tolist()}) == 4


def test_preprocessing_matches_reference_transform():
    image = smooth_picture(3, size=(300, 120))
    pixels = to_pixels(image, 224)
    resized = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    expected = torch.from_numpy((resized - mean) / std).permute(2, 0, 1).unsqueeze(0)
    assert pixels.shape == (1, 3, 224, 224)
    torch.testing.assert_close(pixels, expected)


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "CMYK", "1", "I;16", "RGB"])
def test_odd_image_modes_encode(codec, tmp_path, mode):
    image = smooth_picture(5).convert(mode)
    path = tmp_path / ("odd.tiff" if mode in ("CMYK", "I;16") else "odd.png")
    image.save(path)
    codes = codec.encode(path)
    assert codes.shape == (1, 32)


def test_palette_with_transparency(codec, tmp_path):
    image = smooth_picture(6).convert("P")
    image.info["transparency"] = 0
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    assert codec.encode(path).shape == (1, 32)


def test_exif_orientation_is_applied(codec, tmp_path):
    upright = smooth_picture(7, size=(160, 100))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes, plus a tag
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    assert torch.equal(codec.encode(path), codec.encode(np.asarray(upright)))


def test_missing_file(codec, tmp_path):
    with pytest.raises(InputError, match="no such image file"):
        codec.encode(tmp_path / "absent.png")


def test_empty_file(codec, tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        codec.encode(path)


def test_non_image_file(codec, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture at all\n")
    with pytest.raises(InputError, match="not an image PIL can read"):
        codec.encode(path)


def test_truncated_image(codec, tmp_path, picture_path):
    data = picture_path.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        codec.encode(path)


def test_directory_is_not_an_image(codec, tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        codec.encode(tmp_path)


def test_bad_array_shape(codec):
    with pytest.raises(InputError, match="expected"):
        codec.encode(np.zeros((4, 4, 7), dtype=np.uint8))


def test_embedding_shape_tiny(codec, picture_path):
    embedding = codec.embed(codec.encode(picture_path))
    assert embedding.shape == (1, 32)


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (torch.zeros(1, 31, dtype=torch.long), r"shape \[1, 32\], got \[1, 31\]"),
        (torch.zeros(2, 32, dtype=torch.long), r"shape \[1, 32\], got \[2, 32\]"),
        (torch.full((1, 32), 8192), "code 8192 out of range"),
        (torch.full((1, 32), -1), "code -1 out of range"),
        (torch.zeros(1, 32), "must be integers"),
    ],
)
def test_decode_validates_codes(codec, codes, message):
    with pytest.raises(GenerationError, match=message):
        codec.decode(codes, seed=0)


def test_decode_rejects_condition(codec, picture_path):
    with pytest.raises(InputError, match="takes no condition"):
        codec.decode(torch.zeros(1, 32, dtype=torch.long), condition=picture_path)


def test_seeded_decode_repeats_exactly(codec, picture_path):
    codes = codec.encode(picture_path)
    first = np.asarray(codec.decode(codes, seed=11))
    second = np.asarray(codec.decode(codes, seed=11))
    other = np.asarray(codec.decode(codes, seed=12))
    assert first.shape == (32, 32, 3)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_pipeline_receives_the_seed_embedding(codec, picture_path, monkeypatch):
    pipe = codec.pipeline
    calls = []
    real_call = type(pipe).__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    codes = codec.encode(picture_path)
    codec.decode(codes, seed=0)
    (kwargs,) = calls
    torch.testing.assert_close(kwargs["image_embeds"], codec.embed(codes))
    assert kwargs["prompt"] == ""
    assert kwargs["noise_level"] == 0
    assert kwargs["guidance_scale"] == 10.0
    assert kwargs["num_inference_steps"] == 2
    assert kwargs["latents"].shape == (1, 4, 16, 16)
    assert "image" not in kwargs


def test_pipeline_loads_without_image_encoder(codec):
    assert codec.pipeline.image_encoder is None
    assert codec.pipeline.feature_extractor is None


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_save_formats(codec, tmp_path, suffix):
    picture = smooth_picture(8, size=(32, 32))
    written = tmp_path / f"out{suffix}"
    codec.save(picture, written)
    with Image.open(written) as reread:
        assert reread.format == {".jpg": "JPEG", ".png": "PNG"}[suffix]
        assert reread.size == (32, 32)


def test_save_rejects_unknown_suffix(codec, tmp_path):
    with pytest.raises(InputError, match=r"\.jpg or \.png"):
        codec.save(smooth_picture(8), tmp_path / "out.gifx")


@pytest.mark.parametrize(
    ("steps", "message"),
    [(0, "0: Input should be greater than or equal to 1"), ("many", "many: Input should be")],
)
def test_bad_steps_option(demo_options, steps, message):
    codec = ImageCodec({**demo_options, "image_steps": steps})
    with pytest.raises(ConfigError, match=f"--image-steps .*{message}"):
        codec.decode(torch.zeros(1, 32, dtype=torch.long), seed=0)


def test_unavailable_device(demo_options, picture_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    codec = ImageCodec({**demo_options, "image_device": "cuda"})
    with pytest.raises(ConfigError, match="CUDA is not available"):
        codec.encode(picture_path)


def test_codec_contract(demo_options, picture_path, tmp_path):
    from anygpt_core.testing import check_codec_contract

    codes = check_codec_contract(IMAGE, demo_options, picture_path, tmp_path, min_distinct=16)
    assert codes.shape == (1, 32)


def test_low_memory_mode_decodes_on_cpu(demo_options, picture_path):
    codec = ImageCodec({**demo_options, "image_low_memory": True})
    picture = codec.decode(codec.encode(picture_path), seed=3)
    assert picture.size == (32, 32)


def test_decode_output_is_an_image(codec, tmp_path: Path, picture_path):
    picture = codec.decode(codec.encode(picture_path), seed=1)
    codec.save(picture, tmp_path / "decoded.jpg")
    assert (tmp_path / "decoded.jpg").stat().st_size > 0


@pytest.mark.parametrize(("suffix", "fmt"), [(".jpg", "JPEG"), (".png", "PNG")])
def test_decoded_picture_saves_in_memory_as_on_disk(codec, tmp_path, picture_path, suffix, fmt):
    picture = codec.decode(codec.encode(picture_path), seed=1)
    buffer = io.BytesIO()
    codec.save(picture, buffer, suffix=suffix)
    path = tmp_path / f"decoded{suffix}"
    codec.save(picture, path)
    assert buffer.getvalue() == path.read_bytes()
    with Image.open(io.BytesIO(buffer.getvalue())) as in_memory, Image.open(path) as on_disk:
        assert in_memory.format == fmt
        assert in_memory.size == picture.size
        assert np.array_equal(np.asarray(in_memory), np.asarray(on_disk))


def test_save_to_a_file_object_needs_a_suffix(codec):
    with pytest.raises(InputError, match="needs a suffix"):
        codec.save(smooth_picture(8), io.BytesIO())


def test_decompression_bomb_is_refused_before_decoding(codec, tmp_path):
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 100 M pixels in a few kB
    with pytest.raises(InputError, match=r"10000x10000 pixels is too large"):
        codec.encode(path)
