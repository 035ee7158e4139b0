from pathlib import Path

import pytest
import torch
from anygpt_image.checkpoint import VIT_PREFIX, load_seed
from anygpt_image.codec import ImageCodec
from anygpt_image.config import CONFIG_NAME, SeedConfig
from anygpt_image.demo import build_tiny_seed

from anygpt_core.checkpoints import read_state_dict, resolve_checkpoint
from anygpt_core.errors import CheckpointError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_state() -> dict:
    return build_tiny_seed(0).state_dict()


def _write(directory: Path, state: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    SeedConfig.tiny().save(directory / CONFIG_NAME)
    torch.save(state, directory / "seed_quantizer.pt")
    return directory / "seed_quantizer.pt"


def test_demo_layout_loads_with_separate_vit(demo_options):
    seed = resolve_checkpoint(
        demo_options["image_tokenizer_path"], flag="f", filename="seed_quantizer.pt"
    )
    vit = Path(demo_options["image_vit_path"])
    assert not any(k.startswith(VIT_PREFIX) for k in read_state_dict(seed))
    assert not any(k.startswith(VIT_PREFIX) for k in read_state_dict(vit))
    model = load_seed(seed, vit, device=CPU, dtype=torch.float32)
    assert model.config == SeedConfig.tiny()


def test_combined_file_needs_no_vit_path(tmp_path, tiny_state):
    path = _write(tmp_path / "all", tiny_state)
    model = load_seed(path, None, device=CPU, dtype=torch.float32)
    for key, value in tiny_state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_published_layout_without_vit_path_names_the_flag(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if not k.startswith(VIT_PREFIX)}
    path = _write(tmp_path / "novit", state)
    with pytest.raises(CheckpointError, match="--image-vit-path"):
        load_seed(path, None, device=CPU, dtype=torch.float32)


def test_missing_keys_are_named(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if not k.startswith("distill_image_proj")}
    path = _write(tmp_path / "missing", state)
    with pytest.raises(
        CheckpointError,
        match=r"does not match the SEED-2 model: 2 missing keys \(distill_image_proj\.weight",
    ):
        load_seed(path, None, device=CPU, dtype=torch.float32)


def test_wrong_shapes_are_named(tmp_path, tiny_state):
    state = dict(tiny_state, **{"quantize.embedding.weight": torch.zeros(100, 8)})
    path = _write(tmp_path / "shape", state)
    with pytest.raises(
        CheckpointError,
        match=r"1 shape mismatch \(file vs model: quantize\.embedding\.weight \(100, 8\) vs \(8192, 8\)",
    ):
        load_seed(path, None, device=CPU, dtype=torch.float32)


def test_training_only_keys_are_optional_and_extra_keys_ignored(tmp_path, tiny_state):
    state = {
        k: v
        for k, v in tiny_state.items()
        if not k.startswith(("pos_embed", "blocks.", "Qformer.bert.embeddings.position_ids"))
    }
    assert "pos_embed_image" not in state  # the prefix filter also drops it ...
    state["pos_embed_image"] = tiny_state["pos_embed_image"]  # ... so put the used one back
    state["Qformer.cls.predictions.bias"] = torch.zeros(10)
    path = _write(tmp_path / "optional", state)
    model = load_seed(path, None, device=CPU, dtype=torch.float32)
    assert torch.equal(model.Qformer.bert.embeddings.position_ids, torch.arange(64).unsqueeze(0))
    assert torch.count_nonzero(model.pos_embed) == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{tmp}/nope.pt", "--image-tokenizer-path {tmp}/nope.pt: no such file or folder"),
        ("{tmp}", "--image-tokenizer-path {tmp}: no seed_quantizer.pt in this folder"),
        (
            "AILab-CVC/seed-tokenizer-2",
            "--image-tokenizer-path AILab-CVC/seed-tokenizer-2: seed_quantizer.pt is not in the "
            "local Hugging Face cache (offline); run `hf download AILab-CVC/seed-tokenizer-2` "
            "where there is network, or pass a local path",
        ),
    ],
)
def test_codec_reports_where_the_tokenizer_is_not(
    demo_options, picture_path, monkeypatch, tmp_path, value, message
):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    codec = ImageCodec({**demo_options, "image_tokenizer_path": value.format(tmp=tmp_path)})
    with pytest.raises(CheckpointError) as err:
        codec.encode(picture_path)
    assert str(err.value) == message.format(tmp=tmp_path)


def test_codec_reports_missing_decoder(demo_options, tmp_path, picture_path):
    codec = ImageCodec({**demo_options, "image_decoder_path": str(tmp_path)})
    codes = codec.encode(picture_path)
    with pytest.raises(CheckpointError, match=r"no model_index\.json"):
        codec.decode(codes, seed=0)


def test_codec_reports_uncached_decoder_hub_id(demo_options, picture_path, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    codec = ImageCodec(
        {**demo_options, "image_decoder_path": "stabilityai/stable-diffusion-2-1-unclip"}
    )
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        codec.decode(codec.encode(picture_path), seed=0)


def test_codec_reports_wrong_tokenizer_file(demo_options, tmp_path, picture_path):
    wrong = tmp_path / "other.pt"
    torch.save({"some.weight": torch.zeros(3)}, wrong)
    codec = ImageCodec({**demo_options, "image_tokenizer_path": str(wrong), "image_vit_path": None})
    with pytest.raises(CheckpointError, match="holds no EVA-ViT-g weights"):
        codec.encode(picture_path)


def _damaged_pipeline(demo_options, tmp_path, component, edit):
    import shutil

    from safetensors.torch import load_file, save_file

    target = shutil.copytree(demo_options["image_decoder_path"], tmp_path / "unclip")
    weights_file = next((target / component).glob("*.safetensors"))
    weights = load_file(weights_file)
    edit(weights)
    save_file(weights, weights_file)
    return target


@pytest.mark.parametrize(
    ("component", "message"),
    [
        ("unet", "its weights lack"),
        ("vae", "its weights lack"),
        ("image_normalizer", "its weights lack mean"),
        ("text_encoder", "tensors of its config are not in its weights"),
    ],
)
def test_pipeline_with_a_missing_tensor_is_refused(demo_options, tmp_path, component, message):
    """diffusers would leave the tensor empty and transformers would make it random: refused."""
    from anygpt_image.unclip import load_unclip

    def drop_first(weights):
        weights.pop(sorted(weights)[0])

    broken = _damaged_pipeline(demo_options, tmp_path, component, drop_first)
    with pytest.raises(CheckpointError, match=f"{component}: .*{message}") as info:
        load_unclip(broken, device=torch.device("cpu"), dtype=torch.float32, low_memory=False)
    assert "\n" not in str(info.value)


def test_text_encoder_saved_with_the_old_text_model_prefix_loads(demo_options, tmp_path):
    """The published pipeline's CLIP text encoder predates transformers 5's key layout."""
    from anygpt_image.unclip import load_unclip

    def prefix(weights):
        for key in list(weights):
            weights[f"text_model.{key}"] = weights.pop(key)

    old = _damaged_pipeline(demo_options, tmp_path, "text_encoder", prefix)
    kwargs = dict(device=torch.device("cpu"), dtype=torch.float32, low_memory=False)
    loaded = load_unclip(old, **kwargs).text_encoder.state_dict()
    reference = load_unclip(demo_options["image_decoder_path"], **kwargs).text_encoder.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_text_to_image_needs_no_vit_and_loads_only_the_decoder(demo_options, picture_path):
    """Codes -> embedding reads about 30M of SEED-2's 1.15B parameters and never the ViT."""
    full = ImageCodec(demo_options)
    codes = full.encode(picture_path)
    without_vit = ImageCodec({**demo_options, "image_vit_path": None})
    embedding = without_vit.embed(codes)
    assert not without_vit.is_loaded("seed")  # the whole tokenizer was never built
    decoder = without_vit.seed_decoder
    assert all(p.is_meta for p in decoder.visual_encoder.parameters())
    assert all(p.is_meta for p in decoder.Qformer.parameters())
    torch.testing.assert_close(embedding, full.embed(codes), rtol=0, atol=0)
    picture = without_vit.decode(codes, seed=0)
    assert picture.size == full.decode(codes, seed=0).size
    with pytest.raises(CheckpointError, match="--image-vit-path"):
        without_vit.encode(picture_path)  # reading an image does need the ViT
