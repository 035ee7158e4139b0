from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anygpt_core.errors import CheckpointError, ConfigError, InputError
from anygpt_core.evaluation.scorers import SCORER_KINDS, Scorers
from anygpt_core.evaluation.testing import write_tiny_scorers


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a busy machine makes them spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_scorers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tiny_scorers(tmp_path_factory.mktemp("scorers"))


@pytest.fixture(scope="module")
def scorers(tiny_scorers) -> Scorers:
    return Scorers(tiny_scorers, batch_size=2)


def noise(seconds: float, rate: int, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(
        np.float32
    )


def picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def in_range(values: list[float]) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) and -1.0 <= v <= 1.0 for v in values)


def test_write_tiny_scorers_is_deterministic(tiny_scorers, tmp_path):
    again = write_tiny_scorers(tmp_path)
    assert set(again) == set(SCORER_KINDS)
    for kind, folder in tiny_scorers.items():
        first = {p.name: p.read_bytes() for p in Path(folder).iterdir()}
        second = {p.name: p.read_bytes() for p in Path(again[kind]).iterdir()}
        assert first == second, kind
        assert any(name.endswith(".safetensors") for name in first)


def test_scorers_transcribe_batch_of_lengths(scorers):
    waves = [noise(seconds, 22050, seed) for seed, seconds in enumerate((0.4, 1.3, 2.0))]
    texts = scorers.transcribe(waves, 22050)
    assert len(texts) == 3
    assert all(isinstance(text, str) and text for text in texts)
    assert scorers.transcribe(waves, 22050) == texts
    assert scorers.transcribe(waves[1:2], 22050) == texts[1:2]  # batch-independent


def test_scorers_transcribe_long_form(scorers):
    texts = scorers.transcribe([noise(31.0, 16000, 3), noise(1.0, 16000, 4)], 16000)
    assert len(texts) == 2
    assert all(isinstance(text, str) for text in texts)


def test_scorers_speaker_embeddings_and_similarity(scorers):
    waves = [noise(seconds, 16000, seed) for seed, seconds in enumerate((0.5, 0.5, 0.8))]
    embeddings = scorers.speaker_embeddings(waves, 16000)
    assert embeddings.shape == (3, 32)
    assert embeddings.dtype == torch.float32
    # a wave's embedding does not depend on the lengths of the others in its batch
    torch.testing.assert_close(scorers.speaker_embeddings(waves[:1], 16000)[0], embeddings[0])
    sims = scorers.speaker_similarity(waves, [waves[0], waves[0], waves[2]], 16000)
    assert in_range(sims)
    assert sims[0] == pytest.approx(1.0, abs=1e-6)
    assert sims[2] == pytest.approx(1.0, abs=1e-6)
    assert scorers.speaker_similarity(waves, [waves[0], waves[0], waves[2]], 16000) == sims
    assert scorers.speaker_similarity([], [], 16000) == []
    assert scorers.speaker_embeddings([], 16000).shape == (0, 32)
    assert scorers.transcribe([], 16000) == []


def test_scorers_speaker_rejects_short_and_empty_waves(scorers):
    with pytest.raises(InputError, match=r"^wave 1: 0\.00 s is shorter than the 0\.\d\d s"):
        scorers.speaker_embeddings([noise(0.5, 16000, 0), noise(0.001, 16000, 1)], 16000)
    with pytest.raises(InputError, match=r"^wave 0: no samples$"):
        scorers.speaker_embeddings([np.zeros(0, dtype=np.float32)], 16000)


def test_scorers_clip_text_image(scorers):
    images = [picture(40, 48, 0), picture(64, 32, 1), picture(32, 32, 2).convert("L")]
    texts = ["a cat on a mat", "a dog " * 200, ""]  # the long one is truncated to 77 tokens
    scores = scorers.clip_text_image(images, texts)
    assert len(scores) == 3
    assert in_range(scores)
    assert scorers.clip_text_image(images, texts) == scores
    with pytest.raises(ValueError, match="per pair"):
        scorers.clip_text_image(images, texts[:2])


def test_scorers_clip_image_image(scorers):
    a = [picture(40, 48, 0), picture(50, 50, 1)]
    sims = scorers.clip_image_image(a, [a[0], picture(50, 50, 9)])
    assert in_range(sims)
    assert sims[0] == pytest.approx(1.0, abs=1e-6)
    assert sims[1] < 1.0 - 1e-6


def test_scorers_clap_audio_text(scorers):
    waves = [noise(12.0, 16000, 0), noise(0.7, 16000, 1), noise(3.0, 44100, 2)[:, None]]
    texts = ["calm piano", "drums " * 300, "x"]
    scores = scorers.clap_audio_text(waves[:2], 16000, texts[:2])
    scores += scorers.clap_audio_text(waves[2:], 44100, texts[2:])
    assert len(scores) == 3
    assert in_range(scores)
    assert (
        scorers.clap_audio_text(waves[:2], 16000, texts[:2]) == scores[:2]
    )  # 12 s: no random crop


def test_scorers_versions_name_loaded_kinds(tiny_scorers):
    fresh = Scorers(tiny_scorers)
    assert fresh.versions() == {}
    fresh.clip_image_image([picture(32, 32, 0)], [picture(32, 32, 0)])
    assert fresh.versions() == {"clip": tiny_scorers["clip"]}


def test_scorers_sources_default_to_the_paper_checkpoints():
    scorers = Scorers({"clap": "/models/clap"})
    assert scorers.source("whisper") == "openai/whisper-medium"
    assert scorers.source("wavlm-sv") == "microsoft/wavlm-base-plus-sv"
    assert scorers.source("clip") == "openai/clip-vit-large-patch14"
    assert scorers.source("clap") == "/models/clap"


def test_scorers_unknown_kind_is_a_config_error():
    with pytest.raises(
        ConfigError,
        match=r"^--scorer wer: unknown scorer kind; kinds: whisper, wavlm-sv, clip, clap$",
    ) as err:
        Scorers({"wer": "x"})
    assert err.value.exit_code == 6
    with pytest.raises(ConfigError, match="unknown scorer kind"):
        Scorers().check(["clip", "fid"])
    with pytest.raises(ConfigError, match="empty path"):
        Scorers({"clip": " "})


def test_scorers_check_offline_names_the_hub_id(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError) as err:
        Scorers().check(["whisper"])
    message = str(err.value)
    assert message.startswith(
        "--scorer whisper openai/whisper-medium: not in the local Hugging Face"
    )
    assert "`hf download openai/whisper-medium`" in message
    assert "\n" not in message
    assert err.value.exit_code == 4


def test_scorers_check_missing_folder_and_missing_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"^--scorer clip .*nowhere: no such file or folder$"):
        Scorers({"clip": str(tmp_path / "nowhere")}).check(["clip"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        CheckpointError,
        match=r"no weights \(\*\.safetensors or pytorch_model\.bin\) in this folder$",
    ):
        Scorers({"clap": str(tmp_path)}).check(["clap"])


def test_scorers_unloadable_checkpoint_names_the_folder(tmp_path, tiny_scorers):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "clip"}')
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    scorers = Scorers({"clip": str(folder)})
    scorers.check(["clip"])  # found: loading is what fails
    with pytest.raises(CheckpointError, match=rf"^{folder}: not a loadable clip checkpoint \("):
        scorers.clip_image_image([picture(32, 32, 0)], [picture(32, 32, 0)])


def fake_hub_cache(monkeypatch, cache: Path, repo_id: str, folder: str | None) -> None:
    """`repo_id` in a Hugging Face cache at `cache` (a copy of `folder`, or only a config), offline."""
    import shutil

    import huggingface_hub.constants

    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    if folder is None:
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
    else:
        shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def test_scorers_hub_id_loads_from_the_cache_offline(monkeypatch, tmp_path, tiny_scorers):
    fake_hub_cache(monkeypatch, tmp_path, SCORER_KINDS["clip"], tiny_scorers["clip"])
    scorers = Scorers()
    scorers.check(["clip"])
    a = [picture(32, 32, 0)]
    assert scorers.clip_image_image(a, a) == [pytest.approx(1.0, abs=1e-6)]
    assert scorers.versions() == {"clip": "openai/clip-vit-large-patch14"}


def test_scorers_cached_snapshot_without_weights(monkeypatch, tmp_path):
    fake_hub_cache(monkeypatch, tmp_path, "laion/larger_clap_music", None)
    with pytest.raises(CheckpointError) as err:
        Scorers().check(["clap"])
    assert str(err.value).startswith(
        "--scorer clap laion/larger_clap_music: no weights (*.safetensors or pytorch_model.bin) "
        "in its cached snapshot "
    )
    assert str(err.value).endswith("; run `hf download laion/larger_clap_music`")
