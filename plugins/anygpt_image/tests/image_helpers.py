"""Pictures for the image plugin's tests (a uniquely named module: `conftest` is taken by the core)."""

import numpy as np
from PIL import Image


def smooth_picture(seed: int, size: tuple[int, int] = (200, 150)) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = (rng.random((5, 5, 3)) * 255).astype(np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
