"""One plumbing for every checkpoint: resolve, read, check (anygpt_core.checkpoints)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from anygpt_core.checkpoints import (
    check_state_dict,
    read_state_dict,
    resolve_checkpoint,
    split_revision,
)
from anygpt_core.errors import CheckpointError


class Payload:
    """Any class instance makes a checkpoint that needs pickled code."""


def _cache(tmp_path: Path, monkeypatch, repo_id: str, files: dict[str, bytes], revision: str):
    """A Hugging Face cache holding `files` of `repo_id` at `revision` (also its `main`)."""
    commit = "2" * 40
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / revision).write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    return snapshot


def test_split_revision():
    assert split_revision("owner/name@v2") == ("owner/name", "v2")
    assert split_revision("owner/name") == ("owner/name", None)
    assert split_revision("owner/name@") == ("owner/name", None)


def test_resolve_local_file_and_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path / "sub" / "w.pt", flag="--f") == tmp_path / "sub" / "w.pt"
    assert resolve_checkpoint(tmp_path, flag="--f") == tmp_path
    found = resolve_checkpoint(tmp_path, flag="--f", filename="sub/w.pt")
    assert found == tmp_path / "sub" / "w.pt"
    # a folder holding the file's last component, as when the user points into the layout
    assert resolve_checkpoint(tmp_path / "sub", flag="--f", filename="sub/w.pt").name == "w.pt"


@pytest.mark.parametrize(
    ("value", "filename", "message"),
    [
        ("{tmp}/nope.pt", None, "--f {tmp}/nope.pt: no such file or folder"),
        ("{tmp}", "a/w.pt", "--f {tmp}: no a/w.pt in this folder"),
        ("./rel/x", None, "--f ./rel/x: no such file or folder"),
    ],
)
def test_resolve_local_errors(tmp_path, value, filename, message):
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(value.format(tmp=tmp_path), flag="--f", filename=filename)
    assert str(err.value) == message.format(tmp=tmp_path)


def test_a_missing_file_in_a_local_folder_is_no_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint("models/seed.pt", flag="--f")
    assert str(err.value) == "--f models/seed.pt: no such file or folder"


def test_resolve_hub_id_offline_is_one_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint("someone/thing@v1", flag="--f", filename="w.pt")
    assert str(err.value) == (
        "--f someone/thing@v1: w.pt is not in the local Hugging Face cache (offline); run "
        "`hf download someone/thing --revision v1` where there is network, or pass a local path"
    )
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint("someone/thing", flag="")
    assert str(err.value) == (
        "someone/thing: not in the local Hugging Face cache (offline); run "
        "`hf download someone/thing` where there is network, or pass a local path"
    )


def test_resolve_hub_id_from_the_cache_with_a_revision(tmp_path, monkeypatch):
    snapshot = _cache(tmp_path, monkeypatch, "someone/thing", {"a/w.pt": b"x"}, "v1")
    assert resolve_checkpoint("someone/thing@v1", flag="--f") == snapshot
    assert resolve_checkpoint("someone/thing", flag="--f", revision="v1") == snapshot
    found = resolve_checkpoint("someone/thing@v1", flag="--f", filename="a/w.pt")
    assert found.read_bytes() == b"x"
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        resolve_checkpoint("someone/thing", flag="--f")  # `main` is not cached


def test_read_state_dict_formats_and_wrappers(tmp_path):
    state = {"a.weight": torch.ones(2, 3), "b": torch.arange(4)}
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "lightning.ckpt")
    torch.save({"model": state}, tmp_path / "lavis.pth")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for path in ("model.safetensors", "lightning.ckpt", "lavis.pth", "legacy.pt", "."):
        read = read_state_dict(tmp_path / path)
        assert read.keys() == state.keys(), path
        assert all(torch.equal(read[k], state[k]) for k in state), path


def test_read_state_dict_folder_prefers_safetensors(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    torch.save({"y": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    assert list(read_state_dict(tmp_path)) == ["x"]
    (tmp_path / "model.safetensors").unlink()
    assert list(read_state_dict(tmp_path)) == ["y"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "{path}: empty checkpoint file"),
        (b"garbage bytes, not a checkpoint", "{path}: not a readable checkpoint ("),
        ("pickle", "{path}: not a readable checkpoint (it holds pickled objects"),
        ("list", "{path}: expected a flat state dict of named tensors"),
        ("int keys", "{path}: expected a flat state dict of named tensors"),
    ],
)
def test_read_state_dict_refusals_are_one_line(tmp_path, content, expected):
    path = tmp_path / "w.pt"
    if content == "pickle":
        torch.save({"weights": Payload()}, path)
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    elif content == "int keys":
        torch.save({1: torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert str(err.value).startswith(expected.format(path=path))
    assert "\n" not in str(err.value)


def test_read_state_dict_corrupt_safetensors_and_empty_folder(tmp_path):
    broken = tmp_path / "w.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_state_dict(broken)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(tmp_path / "missing.pt")
    assert str(err.value) == f"{tmp_path / 'missing.pt'}: no such file"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as err:
        read_state_dict(tmp_path / "empty")
    assert str(err.value) == (
        f"{tmp_path / 'empty'}: no model.safetensors or pytorch_model.bin in this folder"
    )


def test_check_state_dict_names_every_problem_in_one_line():
    expected = {f"k{i}": torch.zeros(2) for i in range(6)} | {"s": torch.zeros(3), "opt": 0}
    state = {"s": torch.zeros(4), "k0": torch.zeros(2), "x": torch.zeros(1)}
    with pytest.raises(CheckpointError) as err:
        check_state_dict(
            state,
            expected,
            source="f.pt",
            what="the toy model",
            optional=lambda key: key == "opt",
            hint="is this the toy file?",
        )
    assert str(err.value) == (
        "f.pt: does not match the toy model: 5 missing keys (k1, k2, k3, … 2 more); 1 unexpected key "
        "(x); 1 shape mismatch (file vs model: s (4,) vs (3,)); is this the toy file?"
    )


def test_check_state_dict_may_ignore_unexpected_keys(caplog):
    caplog.set_level("INFO", logger="anygpt_core.checkpoints")
    expected = {"a": torch.zeros(1)}
    check_state_dict(
        {"a": torch.ones(1), "b": torch.ones(1)},
        expected,
        source="f.pt",
        what="the toy model",
        ignore_unexpected=True,
    )
    assert "ignoring 1 keys the toy model does not use (e.g. b)" in caplog.text
    check_state_dict({"a": torch.ones(1)}, expected, source="f.pt", what="the toy model")
