"""The codec base (anygpt_core.codec): typed options as CLI flags, thread-safe lazy loading."""

import threading
import time
from pathlib import Path

import pytest
from pydantic import Field

from anygpt_core.codec import CodecOptions, LazyCodec
from anygpt_core.errors import ConfigError
from anygpt_core.spec import CodecOption


class ToyOptions(CodecOptions):
    toy_path: Path | None = Field(None, description="Where the weights are.")
    toy_seconds: float = Field(10.0, gt=0, description="Longest input.")
    toy_steps: int = Field(3, ge=1, description="Decoder steps.")
    toy_fast: bool = Field(False, description="Go faster.")
    toy_name: str = Field("x", description="A name.")


class ToyCodec(LazyCodec[ToyOptions]):
    Options = ToyOptions
    loads = 0

    def model(self) -> int:
        return self.lazy("model", self._load)

    def _load(self) -> int:
        time.sleep(0.05)  # long enough for the threads below to meet here
        type(self).loads += 1
        return 42


def test_cli_options_are_derived_from_the_fields():
    assert ToyOptions.cli_options() == (
        CodecOption(name="toy_path", help="Where the weights are.", type="path", default=None),
        CodecOption(name="toy_seconds", help="Longest input.", type="float", default=10.0),
        CodecOption(name="toy_steps", help="Decoder steps.", type="int", default=3),
        CodecOption(name="toy_fast", help="Go faster.", type="bool", default=False),
        CodecOption(name="toy_name", help="A name.", type="str", default="x"),
    )


def test_an_option_without_description_or_flag_type_is_refused():
    class Bad(CodecOptions):
        bad: list[int] = Field(default_factory=list, description="Not a flag type.")

    with pytest.raises(TypeError, match=r"Bad\.bad: an option needs a description"):
        Bad.cli_options()


def test_building_never_fails_and_bad_values_fail_on_first_use():
    codec = ToyCodec({"toy_seconds": 0, "toy_steps": "many", "toy_path": None})
    with pytest.raises(ConfigError) as err:
        _ = codec.options
    assert str(err.value) == (
        "--toy-seconds 0: Input should be greater than 0; --toy-steps many: Input should be a "
        "valid integer, unable to parse string as an integer"
    )


def test_values_by_keyword_paths_and_defaults(tmp_path):
    codec = ToyCodec({"toy_steps": None}, toy_path=tmp_path)
    assert codec.options == ToyOptions(toy_path=tmp_path)
    again = ToyCodec(codec.options, toy_steps=5)
    assert again.options.toy_steps == 5
    assert again.options.toy_path == tmp_path


def test_lazy_loads_once_however_many_threads_ask():
    codec = ToyCodec()
    ToyCodec.loads = 0
    results = []
    threads = [threading.Thread(target=lambda: results.append(codec.model())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [42] * 8
    assert ToyCodec.loads == 1
    assert codec.is_loaded("model")
    codec.forget("model")
    assert not codec.is_loaded("model")


def test_a_failed_load_is_tried_again():
    codec = ToyCodec()
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConfigError("not yet")
        return "ok"

    with pytest.raises(ConfigError):
        codec.lazy("part", flaky)
    assert codec.lazy("part", flaky) == "ok"
    assert len(attempts) == 2
