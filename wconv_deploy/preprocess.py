"""How a folder of images becomes model inputs, for ``--inputs`` and ``--calibration`` alike.

Each image is decoded (Pillow), put in the channel order the model was trained on (``rgb``,
``bgr`` or ``gray``; default: ``gray`` for a 1-channel model, ``rgb`` for a 3-channel one),
brought to the spec's height and width by the resize policy and an optional centre crop, then
``x = (pixel * scale - mean) / std`` per channel, as NCHW batch 1 in the input's dtype.

Resize policies (``--resize``): ``auto`` (the default, as images were always loaded: an image
whose size the model accepts is kept, any other is stretched to the spec's H x W), ``stretch``
(always to H x W, aspect ratio not kept), ``cover`` (scaled, aspect kept, until it covers H x W;
add ``--crop center`` for exactly H x W) and ``none`` (never resized: a size the model cannot take
is an error). H x W: the spec's optimum. Resampling is bilinear.

The CLI sets the preprocessing for a whole command (:func:`using`, as ``--max-input-gb`` sets
the input limit), so every stage that loads an image folder, validation, golden files,
calibration, loads it the same way. Importing this module imports neither torch nor onnx.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from wconv_deploy.errors import InputError
from wconv_deploy.fileio import open_regular
from wconv_deploy.spec import InputSpec, TensorSpec, input_limit_bytes

#: Files of an image folder that are read (by suffix, any case); others are ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CHANNEL_ORDERS = ("rgb", "bgr", "gray")
RESIZE_POLICIES = ("auto", "stretch", "cover", "none")
CROPS = ("none", "center")

Cases = list[tuple[str, dict[str, np.ndarray]]]


@dataclass(frozen=True)
class ImagePreprocess:
    """What turns an image file into a model input (see the module docstring). ``channels``
    None: from the model; ``mean``/``std``: one value, or one per channel (empty: 0 and 1)."""

    channels: str | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    scale: float = 1 / 255
    resize: str = "auto"
    crop: str = "none"

    def __post_init__(self) -> None:
        if self.channels is not None and self.channels not in CHANNEL_ORDERS:
            raise InputError(f"--channels {self.channels!r}: choose {', '.join(CHANNEL_ORDERS)}")
        if self.resize not in RESIZE_POLICIES:
            raise InputError(f"--resize {self.resize!r}: choose {', '.join(RESIZE_POLICIES)}")
        if self.crop not in CROPS:
            raise InputError(f"--crop {self.crop!r}: choose {', '.join(CROPS)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"--scale {self.scale}: must be a finite number > 0")
        if not all(math.isfinite(m) for m in self.mean):
            raise InputError(f"--mean {list(self.mean)}: must be finite numbers")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise InputError(f"--std {list(self.std)}: must be finite numbers > 0")

    @property
    def is_default(self) -> bool:
        """Whether this is how images were always loaded (nothing given on the command line)."""
        return self == ImagePreprocess()

    def order(self, tensor: TensorSpec) -> str:
        """The channel order for ``tensor`` (one NCHW image input): given, else by its channels."""
        channels = tensor.dims[1].opt if len(tensor.dims) == 4 else 0
        if channels not in (1, 3):
            raise InputError(f"image folders give 1 or 3 channels, the model takes {channels}")
        order = self.channels or ("gray" if channels == 1 else "rgb")
        if (order == "gray") != (channels == 1):
            raise InputError(f"--channels {order}: the model takes {channels} channel(s)")
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if len(values) not in (0, 1, channels):
                raise InputError(f"{flag}: {len(values)} values for a {channels}-channel input (give 1 or {channels})")
        return order

    def record(self, spec: InputSpec) -> dict[str, Any]:
        """What a model fed by these images expects, as stored in an artifact's metadata."""
        t = spec.inputs[0]
        return {
            "input": t.name,
            "layout": "NCHW",
            "channels": self.order(t),
            "scale": self.scale,
            "mean": list(self.mean) or [0.0],
            "std": list(self.std) or [1.0],
            "resize": self.resize,
            "crop": self.crop,
            "size": [t.dims[2].opt, t.dims[3].opt],
        }


def float_list(text: str | None, flag: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` as numbers (empty for None); InputError naming ``flag`` otherwise."""
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{flag}: {text!r} is not a comma-separated list of numbers") from None


_current: contextvars.ContextVar[ImagePreprocess | None] = contextvars.ContextVar("image_preprocess", default=None)


def current() -> ImagePreprocess:
    """The preprocessing image folders are loaded with here (see :func:`using`)."""
    return _current.get() or ImagePreprocess()


@contextlib.contextmanager
def using(preprocess: ImagePreprocess) -> Iterator[None]:
    """Within the block, image folders are loaded with ``preprocess``."""
    token = _current.set(preprocess)
    try:
        yield
    finally:
        _current.reset(token)


def expected_by(spec: InputSpec, *sources: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """What an artifact should record about its inputs: the current preprocessing when images
    were read (a folder among ``sources``) or options were given; None otherwise."""
    pp = current()
    if any(s is not None and Path(s).is_dir() for s in sources) or not pp.is_default:
        return pp.record(spec)
    return None


def image_files(folder: str | os.PathLike[str], what: str = "--inputs") -> list[Path]:
    """The image files of ``folder``, sorted by name (InputError if it holds none)."""
    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{what}: {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_inputs(
    folder: str | os.PathLike[str],
    spec: InputSpec,
    preprocess: ImagePreprocess | None = None,
    *,
    files: Sequence[Path] | None = None,
    what: str = "--inputs",
) -> Cases:
    """Every image of ``folder`` (or only ``files`` of it) as one batch-1 input of the model's one
    NCHW input, labelled by file name; ``preprocess`` defaults to :func:`current`."""
    pp = preprocess or current()
    if len(spec.inputs) != 1 or len(spec.inputs[0].dims) != 4:
        raise InputError(f"{what} FOLDER needs a model with one NCHW image input")
    t = spec.inputs[0]
    order = pp.order(t)
    root = Path(folder)
    out = []
    for f in image_files(root, what) if files is None else files:
        arr = _to_array(_decode(f, root, order, what), pp, t, f"{what}: image {f.name}")
        feeds = {t.name: arr}
        spec.check_arrays(feeds)
        out.append((f.name, feeds))
    return out


def _decode(f: Path, root: Path, order: str, what: str) -> Any:
    """The image ``f`` (inside ``root``) as a Pillow image in mode L or RGB."""
    from PIL import Image

    with open_regular(f, within=root, what=f"{what}: {f.name}") as fh:
        try:
            opened = Image.open(fh)
            if opened.width * opened.height * (1 if order == "gray" else 3) * 4 > input_limit_bytes():  # known before decoding
                raise InputError(f"{what}: image {f.name} is {opened.width}x{opened.height}: beyond --max-input-gb")
            return opened.convert("L" if order == "gray" else "RGB")
        except InputError:
            raise
        except Exception as e:  # PIL raises several types for unreadable images
            raise InputError(f"{what}: cannot read image {f.name} ({type(e).__name__})") from None


def _to_array(img: Any, pp: ImagePreprocess, t: TensorSpec, where: str) -> np.ndarray:
    """Resize, crop, scale and normalise ``img`` for the input ``t``: a 1xCxHxW array."""
    from PIL import Image

    hd, wd = t.dims[2], t.dims[3]
    fits = hd.min <= img.height <= hd.max and wd.min <= img.width <= wd.max
    if pp.resize == "stretch" or (pp.resize == "auto" and not fits):
        img = img.resize((wd.opt, hd.opt), Image.Resampling.BILINEAR)
    elif pp.resize == "cover":
        k = max(hd.opt / img.height, wd.opt / img.width)
        size = (max(wd.opt, round(img.width * k)), max(hd.opt, round(img.height * k)))
        img = img.resize(size, Image.Resampling.BILINEAR)
    if pp.crop == "center":
        if img.width < wd.opt or img.height < hd.opt:
            raise InputError(
                f"{where} is {img.width}x{img.height}, smaller than the {wd.opt}x{hd.opt} to crop (try --resize cover)"
            )
        left, top = (img.width - wd.opt) // 2, (img.height - hd.opt) // 2
        img = img.crop((left, top, left + wd.opt, top + hd.opt))
    if not (hd.min <= img.height <= hd.max and wd.min <= img.width <= wd.max):
        raise InputError(
            f"{where} is {img.width}x{img.height} (WxH) after --resize {pp.resize}; the model takes "
            f"{wd.min}..{wd.max} x {hd.min}..{hd.max}: choose --resize stretch, or cover with --crop center"
        )
    arr = np.asarray(img, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if pp.order(t) == "bgr":
        arr = arr[::-1]
    arr = arr * np.float32(pp.scale)
    if pp.mean:
        arr = arr - np.asarray(pp.mean, dtype=np.float32).reshape(-1, 1, 1)
    if pp.std:
        arr = arr / np.asarray(pp.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray(arr[None].astype(np.dtype(t.dtype)))


F = TypeVar("F", bound=Callable[..., Any])


def applies_preprocess(f: F) -> F:
    """Run ``f`` with its ``preprocess=`` keyword argument, when given, as the current
    preprocessing: every image folder loaded on its behalf is loaded that way."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        preprocess = kwargs.get("preprocess")
        if preprocess is None:
            return f(*args, **kwargs)
        with using(preprocess):
            return f(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
