import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest
from anygpt_image.codec import ImageCodec
from anygpt_image.demo import write_demo_assets
from anygpt_image.plugin import IMAGE
from image_helpers import smooth_picture


@pytest.fixture(scope="session")
def demo_options(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny assets from the plugin's own demo builder; option values as the codec gets them."""
    values = write_demo_assets(tmp_path_factory.mktemp("image-demo"))
    options = {option.name: option.default for option in IMAGE.options}
    options.update(values, image_steps=2, image_device="cpu")
    return options


@pytest.fixture(scope="session")
def codec(demo_options: dict) -> ImageCodec:
    return ImageCodec(demo_options)


@pytest.fixture(scope="session")
def picture_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pictures") / "picture.png"
    smooth_picture(0).save(path)
    return path
