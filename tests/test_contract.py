from __future__ import annotations

import pytest

from anygpt_core.testing import check_codec_contract


def test_toy_codec_passes_the_contract(toy_env, tmp_path):
    from anygpt_core.plugins import discover

    plugins = discover()
    spec = plugins.modality("toy")
    options = plugins.demo_assets(tmp_path / "assets")
    sample = tmp_path / "s.txt"
    sample.write_text("0.1 0.2 -0.5 0.9 -0.9")
    codes = check_codec_contract(spec, options, sample, tmp_path)
    assert codes.shape == (2, 5)


def test_contract_catches_degenerate_codes(toy_env, tmp_path):
    from anygpt_core.plugins import discover

    plugins = discover()
    sample = tmp_path / "s.txt"
    sample.write_text("0.5 0.5 0.5")
    options = plugins.demo_assets(tmp_path / "assets")
    with pytest.raises(AssertionError, match="degenerate codes"):
        check_codec_contract(plugins.modality("toy"), options, sample, tmp_path, min_distinct=3)
