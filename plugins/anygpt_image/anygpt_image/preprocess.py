"""Reading images and turning them into the tokenizer's input, as the reference does.

Reference transform: PIL `.convert("RGB")`, resize to (224, 224) bicubic without keeping the aspect
ratio, scale to [0, 1], normalise with the CLIP mean and std. Done here with PIL and torch only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from anygpt_core.errors import InputError
from anygpt_image.config import CLIP_MEAN, CLIP_STD

__all__ = ["ImageSource", "open_image", "to_pixels"]

ImageSource = Path | str | np.ndarray | torch.Tensor | Image.Image

#: Largest image accepted, in pixels (PIL's own decompression-bomb threshold): every input is
#: resized to 224x224 anyway, and a larger header is more likely a bomb than a photo.
MAX_PIXELS = 89_478_485


def _from_file(path: Path) -> Image.Image:
    if not path.exists():
        raise InputError(f"{path}: no such image file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file; give a PNG, JPEG or other image PIL can read")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise InputError(
                        f"{path}: {width}x{height} pixels is too large (limit {MAX_PIXELS:,}); "
                        "resize it first"
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: too large to decode safely ({err})") from err
    except UnidentifiedImageError as err:
        raise InputError(f"{path}: not an image PIL can read (PNG, JPEG, WebP, ...)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: corrupt or truncated image ({err})") from err
    return image


def _from_array(array: np.ndarray | torch.Tensor) -> Image.Image:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        array = array.numpy()
    data = np.asarray(array)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] not in (3, 4)):
        raise InputError(
            f"image array of shape {tuple(data.shape)}: expected (H, W), (H, W, 3|4) or (3|4, H, W)"
        )
    if data.size == 0:
        raise InputError("image array is empty")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.floating) or not np.isfinite(data).all():
            raise InputError(
                f"image array of dtype {data.dtype}: expected uint8 or float in [0, 1]"
            )
        data = (np.clip(data, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(data)


def open_image(source: ImageSource) -> Image.Image:
    """Load a file (EXIF orientation applied) or wrap an array; any PIL mode.

    Args:
        source: a path, a PIL image, or an array: uint8 or float in [0, 1], (H, W), (H, W, 3|4)
            or a tensor (3|4, H, W).

    Raises:
        InputError: the file is missing, empty, corrupt or not an image, or the array is malformed.
    """
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _from_array(source)
    return _from_file(Path(source))


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # palette transparency is only kept through RGBA
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16/32-bit greyscale: PIL's RGB conversion clips instead of scaling; scale to 8 bit first.
        data = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or data.max() > 255 else 255.0
        image = Image.fromarray((np.clip(data / peak, 0, 1) * 255).round().astype(np.uint8))
    return image.convert("RGB")


def to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """The reference transform. Returns float32 (1, 3, size, size), CLIP-normalised."""
    resized = _rgb(image).resize((size, size), Image.Resampling.BICUBIC)
    data = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((data - mean) / std).unsqueeze(0)
