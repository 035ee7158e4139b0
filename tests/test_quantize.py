"""Low-memory modes: the int8/int4 language model and codecs offloaded between calls."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_runner import run_cli

from anygpt_core.api import AnyGPT, CodecSet
from anygpt_core.engine import quantize
from anygpt_core.engine.backends import LlamaBackend
from anygpt_core.engine.quantize import (
    QuantizedLinear,
    check_quantize,
    quantized_bytes,
    working_modes,
)
from anygpt_core.errors import CheckpointError, ConfigError
from anygpt_core.loading import cpu_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("rows", [1, 20])  # one token (the kernel), a prompt (int8: dequantised)
def test_quantized_linear_matches_its_dequantized_weights(mode, rows):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn((96, 256), generator=generator)
    layer = QuantizedLinear(weight, mode, dtype=torch.bfloat16)
    x = torch.randn((2, rows, 256), generator=generator)
    got = layer(x)
    assert got.shape == (2, rows, 96) and got.dtype == torch.float32
    deq = quantize.dequantized(weight, mode, group=layer.group)
    want = x.to(torch.bfloat16).float() @ deq.T
    assert (got.reshape(-1, 96) - want.reshape(-1, 96)).abs().max() < 0.02 * want.abs().max()
    dense = x @ weight.T
    assert (got - dense).abs().max() < (0.05 if mode == "int8" else 0.3) * dense.abs().max()


def test_int4_refuses_a_width_no_group_divides_and_quantize_model_keeps_that_layer():
    with pytest.raises(ValueError, match="inputs by 32 and outputs by 16"):
        QuantizedLinear(torch.randn(16, 40), "int4", dtype=torch.bfloat16)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(
        [torch.nn.Linear(64, 16, bias=False), torch.nn.Linear(40, 16, bias=False)]
    )
    model.head = torch.nn.Linear(64, 8, bias=False)  # outside the layers: never quantised
    assert quantize.quantize_model(model, "int4") == 1
    assert isinstance(model.layers[0], QuantizedLinear)
    assert type(model.layers[1]) is torch.nn.Linear and type(model.head) is torch.nn.Linear


def test_both_modes_work_on_this_cpu_in_bfloat16():
    assert working_modes("cpu", "bfloat16") == ("int8", "int4")


def test_a_mode_without_its_kernel_names_the_modes_that_work(monkeypatch):
    monkeypatch.setattr(quantize, "working_modes", lambda device, dtype: ("int8",))
    with pytest.raises(ConfigError) as err:
        check_quantize("int4", CPU, torch.bfloat16)
    assert str(err.value) == (
        "--quantize int4: no working int4 kernel on cpu with bfloat16; modes that work here: "
        "none, int8"
    )
    assert err.value.exit_code == 6


@pytest.fixture(scope="module")
def int8_gpt():
    return AnyGPT.load(device="cpu", quantize="int8", offload_codecs=True)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_demo_writes_well_formed_spans(mode, int8_gpt, tmp_path):
    gpt = int8_gpt if mode == "int8" else AnyGPT.load(device="cpu", quantize=mode)
    layers = sum(isinstance(m, QuantizedLinear) for m in gpt.model.modules())
    assert layers == 7 * gpt.model.config.num_hidden_layers
    assert not LlamaBackend.supports(gpt.model)  # the lean path stacks float weights
    assert gpt.model.model.embed_tokens.weight.dtype == torch.bfloat16
    for task, shape in [("text|image|a red bus", (1, 32)), ("text|music|calm piano", (4, None))]:
        result = gpt.run(task, seed=0, save=False)
        assert [s.modality for s in result.spans] == [task.split("|")[1]]
        codes = result.spans[0].codes
        assert codes.shape[0] == shape[0] and codes.shape[1] == (shape[1] or codes.shape[1])
        assert len(result.media) == 1


def test_offloaded_codecs_are_released_after_each_call_and_give_the_same_media(int8_gpt):
    plain = CodecSet(int8_gpt.plugins, int8_gpt.codecs.options)
    offloaded = int8_gpt.codecs
    codes = torch.randint(0, 1024, (1, 25), generator=torch.Generator().manual_seed(0))
    first = offloaded.codec("speech")
    wave = offloaded.decode("speech", codes, seed=0)
    assert offloaded.codec("speech") is not first  # weights released; the next call loads again
    assert torch.equal(wave, plain.decode("speech", codes, seed=0))
    again = offloaded.encode("speech", wave.numpy())
    assert torch.equal(again, plain.encode("speech", wave.numpy()))


def test_offload_on_a_gpu_moves_models_in_for_a_call_and_out_after(monkeypatch):
    moves: list[str] = []

    class Codec:
        device = torch.device("cuda")

        def decode(self, codes, **kwargs):
            moves.append("decode")
            return codes

    spec = SimpleNamespace(condition=None, decoding=None)
    codecs = CodecSet(SimpleNamespace(modality=lambda name: spec), offload=True)
    codecs._codecs["toy"] = Codec()
    monkeypatch.setattr("anygpt_core.api._check_codes", lambda spec, codes: None)
    monkeypatch.setattr(
        "anygpt_core.api._move_models", lambda codec, target: moves.append(str(target))
    )
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: moves.append("empty_cache"))
    codecs.decode("toy", torch.zeros(1, 1))
    assert moves == ["cuda", "decode", "cpu", "empty_cache"]
    assert "toy" in codecs._codecs  # kept: its models wait on the CPU


def test_moving_a_codecs_models_keeps_meta_parts_and_accelerate_hooks():
    from anygpt_core.api import _move_models

    class Hooked(torch.nn.Linear):
        _hf_hook = object()  # accelerate offloads it already (--image-low-memory)

        def modules(self):
            raise AssertionError("moved a module accelerate offloads")

    partial = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    partial[1].to("meta")  # a part the codec never loads (SEED-2's encoder when decoding)
    pipeline = SimpleNamespace(components={"unet": partial, "vae": Hooked(2, 2), "name": "x"})
    codec = SimpleNamespace(loaded_values=lambda: {"model": partial, "pipeline": pipeline, "n": 3})
    _move_models(codec, CPU)  # `Module.to` raised on the meta part
    assert partial[1].weight.is_meta and not partial[0].weight.is_meta


def test_quantized_size_is_what_the_memory_check_counts(tmp_path):
    config = {"hidden_size": 4096, "vocab_size": 49418, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16"}))
    with (tmp_path / "model.safetensors").open("wb") as f:  # sparse: 13.5 GB of float16
        f.truncate(13_476_839_424)
    gib = 2**30
    int8 = quantized_bytes(tmp_path, "int8", stored_bytes=13_476_839_424, itemsize=2)
    int4 = quantized_bytes(tmp_path, "int4", stored_bytes=13_476_839_424, itemsize=2)
    assert 6.6 < int8 / gib < 6.8 and 3.7 < int4 / gib < 3.9
    assert cpu_dtype(tmp_path, 16 * gib, quantize="int8") == "bfloat16"
    with pytest.raises(CheckpointError) as err:
        cpu_dtype(tmp_path, 6 * gib, quantize="int8")
    assert str(err.value) == (
        f"{tmp_path}: the model needs 6.7 GiB even in int8 and 6.0 GiB of memory is available; "
        "use a GPU (--device cuda), --quantize int4 or a machine with more memory"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--quantize", "int3"], "Error: --quantize int3: expected one of int8, int4\n"),
        (["--offload", "llm"], "Error: --offload llm: expected codecs\n"),
        (["--prefix-cache-mb", "-1"], "Error: --prefix-cache-mb -1: expected 0 or more\n"),
    ],
)
@pytest.mark.parametrize("command", ["run", "chat", "serve", "web"])
def test_unknown_modes_are_one_line_exit_6_before_loading(command, args, says, capsys):
    extra = ["text|text|hi"] if command == "run" else []
    code, _, err = run_cli([command, "--device", "cpu", *args, *extra], capsys)
    assert (code, err) == (6, says)


def test_run_with_both_modes_and_a_missing_kernel(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(
        ["run", "--device", "cpu", "--quantize", "int4", "--offload", "codecs", "--seed", "0",
         "--output-dir", str(tmp_path), "--json", "text|speech|hello"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert Path(json.loads(out)["files"][0]).suffix == ".wav"
    monkeypatch.setattr(quantize, "working_modes", lambda device, dtype: ("int8",))
    code, _, err = run_cli(["run", "--device", "cpu", "--quantize", "int4", "text|text|hi"], capsys)
    assert code == 6
    assert err.splitlines()[-1] == (
        "Error: --quantize int4: no working int4 kernel on cpu with bfloat16; modes that work "
        "here: none, int8"
    )


def test_serve_with_int8_and_offloaded_codecs(tmp_path):
    from test_serve import MODEL, start_server, stop

    server = start_server(tmp_path / "server.log", "--quantize", "int8", "--offload", "codecs")
    try:
        client = server.client()
        speech = client.audio.speech.create(
            model=MODEL, voice="alloy", input="hello", response_format="wav"
        )
        assert speech.read()[:4] == b"RIFF"
        picture = client.images.generate(model=MODEL, prompt="a red bus", n=1)
        assert picture.data[0].b64_json
        assert "--quantize" not in server.text() and "Traceback" not in server.text()
    finally:
        stop(server)
