import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def gpt(tmp_path_factory):
    """The embedded demo (every installed modality), built under a temporary ANYGPT_HOME."""
    from anygpt_core.api import AnyGPT

    os.environ.setdefault("ANYGPT_HOME", str(tmp_path_factory.mktemp("anygpt_home")))
    return AnyGPT.load(device="cpu")
