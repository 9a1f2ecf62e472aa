"""int8 calibration users can drive: which inputs, a reusable result, and progress while it runs.

``--calibration-limit`` takes a seeded, reproducible subset of the calibration inputs (N inputs,
or a share such as 0.25): of an image folder only the chosen files are decoded; the samples of
an ``.npz`` batch count one by one (where the model takes batch 1).

``--calibration-cache FILE`` keeps the calibration result, the activation ranges ONNX Runtime's
calibrator measured (its ``TensorsData``, in its own JSON form), with what it was measured on:
the sha256 of the fp32 ONNX file, a sha256 over the chosen inputs as the model receives them
(so after preprocessing), the calibration method and the onnxruntime version. When all match,
the ranges are handed back to ``quantize_static`` (its ``calibration_cache_path``) and no
calibration pass runs; otherwise calibration runs and the file is replaced. The file is data:
read as a regular file of bounded size, parsed as JSON with limits, never unpickled; a missing,
unreadable, foreign or outdated file means "rebuilt", with the reason in the report.

The calibration pass reports progress through the ``progress`` callback: ONNX Runtime's
calibrator pulls one input set at a time from the reader, so the reader counts them and says
``calibrating 12/40 (30%), 3.1 s elapsed, ETA 7.2 s`` after the first and at every 5%.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wconv_deploy._optional import require
from wconv_deploy.errors import InputError
from wconv_deploy.fileio import file_sha256, read_text, regular_file, write_text_atomic
from wconv_deploy.reports import Report
from wconv_deploy.spec import InputSpec

Cases = list[tuple[str, dict[str, np.ndarray]]]
Progress = Callable[[str], None]

#: What the ``format`` field of a calibration cache says; a file without it is not one.
CACHE_FORMAT = "wconv-deploy calibration cache"
CACHE_VERSION = 1
#: A cache holds ranges (and, for entropy/percentile, histograms) of every activation: large for
#: a large network, never gigabytes.
MAX_CACHE_BYTES = 256 << 20
#: Progress lines: after the first batch, then each time another 1/PROGRESS_STEPS of them is done.
PROGRESS_STEPS = 20


@dataclass(frozen=True)
class CalibrationOptions:
    """Which calibration inputs (``limit``: a count >= 1, or a share in (0, 1); None: all) and
    where the calibration result is kept between runs (``cache``; None: nowhere)."""

    limit: float | None = None
    cache: Path | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and not (0 < self.limit < 1 or (self.limit >= 1 and float(self.limit).is_integer())):
            raise InputError(f"--calibration-limit {self.limit}: give a count (1, 2, ...) or a share between 0 and 1")

    def count(self, available: int) -> int:
        """How many of ``available`` inputs are used (a share rounds up: never none)."""
        if self.limit is None:
            return available
        wanted = math.ceil(self.limit * available) if self.limit < 1 else int(self.limit)
        return min(available, wanted)


def parse_limit(text: str | None) -> float | None:
    """``--calibration-limit`` as given: ``"40"`` or ``"0.25"`` (InputError otherwise)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--calibration-limit {text!r}: give a count (e.g. 40) or a share (e.g. 0.25)") from None
    CalibrationOptions(value)  # checks the range
    return value


def choose(available: int, options: CalibrationOptions, seed: int) -> list[int]:
    """The indices of the inputs used, in their original order: all, or a seeded sample of
    ``options.count(available)`` (the same seed and count choose the same inputs)."""
    n = options.count(available)
    if n == available:
        return list(range(available))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(available, size=n, replace=False))


@dataclass
class CalibrationData:
    """The calibration inputs chosen and what they are, for the report and the cache key."""

    cases: Cases
    source: str
    available: int

    @property
    def describe(self) -> str:
        used = len(self.cases)
        subset = f"{used} of {self.available}" if used < self.available else f"{used}"
        return f"{self.source} ({subset} input set(s))"

    def sha256(self) -> str:
        """A digest of the inputs as the model receives them: names, dtypes, shapes and bytes."""
        h = hashlib.sha256()
        for _, feeds in self.cases:
            for name in sorted(feeds):
                a = np.ascontiguousarray(feeds[name])
                h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
                h.update(a.tobytes())
        return h.hexdigest()


def calibration_data(
    source: str | os.PathLike[str] | None, spec: InputSpec, options: CalibrationOptions, seed: int
) -> CalibrationData:
    """The calibration inputs: those of ``source`` (an ``.npz``, a Polygraphy inputs file or an
    image folder, loaded with the current image preprocessing), or seeded random inputs; cut
    to ``options.limit`` (of a folder, only the chosen images are decoded)."""
    from wconv_deploy.preprocess import image_files, image_inputs
    from wconv_deploy.validate import load_inputs, random_inputs

    if source is None:
        cases = random_inputs(spec, seed)
        label = "seeded random inputs (pass --calibration for real data)"
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"--calibration: {path} does not exist")
        label = os.fspath(path)
        if path.is_dir():
            files = image_files(path, "--calibration")
            picked = [files[i] for i in choose(len(files), options, seed)]
            data = CalibrationData(image_inputs(path, spec, files=picked, what="--calibration"), label, len(files))
            return data
        cases = load_inputs(path, spec)
        if options.limit is not None:
            cases = _samples(cases, spec)
    return CalibrationData([cases[i] for i in choose(len(cases), options, seed)], label, len(cases))


def _samples(cases: Cases, spec: InputSpec) -> Cases:
    """``cases`` with each batch of N samples split into N batch-1 cases where the model takes
    batch 1 (so that a limit counts samples, not the batches a file happens to hold)."""
    if not all(t.dims and t.dims[0].min <= 1 for t in spec.inputs):
        return cases
    out: Cases = []
    for label, feeds in cases:
        sizes = {a.shape[0] if a.ndim else 0 for a in feeds.values()}
        n = sizes.pop() if len(sizes) == 1 else 0
        if n > 1:
            out += [(f"{label}[{i}]", {k: a[i : i + 1] for k, a in feeds.items()}) for i in range(n)]
        else:
            out.append((label, feeds))
    return out


class ProgressReader:
    """ONNX Runtime's calibration data reader (``get_next``) over ``cases``: counts the input
    sets the calibrator pulls (``batches``) and reports progress with an ETA (after the first set,
    then every 5%)."""

    def __init__(self, cases: Cases, progress: Progress | None = None) -> None:
        self._cases = [feeds for _, feeds in cases]
        self._say = progress or (lambda _msg: None)
        self.batches = 0
        self._started = 0.0
        self._step = -1
        self._done = False

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next input set, None after the last; a call after the first means the set before
        it has been run."""
        now = time.monotonic()
        if self.batches == 0:
            self._started = now
        elif not self._done:
            self._report(now - self._started)
        if self.batches >= len(self._cases):
            self._done = True
            return None
        self.batches += 1
        return self._cases[self.batches - 1]

    def __len__(self) -> int:
        return len(self._cases)

    def _report(self, elapsed: float) -> None:
        done, total = self.batches, len(self._cases)
        step = done * PROGRESS_STEPS // total
        if step == self._step and done < total:
            return
        self._step = step
        eta = elapsed / done * (total - done)
        self._say(f"calibrating {done}/{total} ({100 * done / total:.0f}%), {elapsed:.1f} s elapsed, ETA {eta:.1f} s")


# --------------------------------------------------------------------------- the cache


@dataclass
class CalibrationRun(Report):
    """How the activation ranges came about: measured on ``batches`` input sets (0: taken from
    the cache), and what became of the cache (``reused``, ``rebuilt (why)``, None: no cache)."""

    data: str
    batches: int
    cache: str | None = None
    cache_file: str | None = None

    def render(self) -> str:
        lines = [f"calibrated on: {self.data}" + (f", {self.batches} calibration batch(es) run" if self.batches else "")]
        if self.cache is not None:
            where = f"calibration cache {self.cache_file}" if self.cache_file else "activation ranges"
            lines.append(f"{where}: {self.cache}")
        return "\n".join(lines)


def supports_cache() -> bool:
    """Whether this onnxruntime's ``quantize_static`` takes precomputed ranges."""
    q = require("onnxruntime.quantization", "cpu")
    return "calibration_cache_path" in inspect.signature(q.quantize_static).parameters


@dataclass
class CalibrationCache:
    """The cache file and the key its ranges must have been measured under."""

    path: Path
    key: dict[str, str]

    @classmethod
    def for_run(cls, path: str | os.PathLike[str], model: Path, data: CalibrationData, method: str) -> CalibrationCache:
        """The cache at ``path`` for calibrating ``model`` on ``data`` with ``method``; InputError
        when it cannot be written there or this onnxruntime cannot take cached ranges."""
        ort = require("onnxruntime", "cpu")
        p = Path(path)
        if not supports_cache():
            raise InputError(
                f"--calibration-cache: onnxruntime {ort.__version__} cannot take precomputed ranges "
                "(quantize_static has no calibration_cache_path); upgrade onnxruntime"
            )
        if not (p.parent if str(p.parent) else Path(".")).is_dir():
            raise InputError(f"--calibration-cache {p}: folder {p.parent} does not exist")
        if os.path.lexists(p):
            regular_file(p, what=f"--calibration-cache {p}")  # a FIFO or folder is refused, not replaced
        key = {
            "model_sha256": file_sha256(model),
            "data_sha256": data.sha256(),
            "data": data.describe,
            "method": method,
            "onnxruntime": ort.__version__,
        }
        return cls(p, key)

    def restore(self, ranges: Path) -> str | None:
        """Write the cached ranges to ``ranges`` (ONNX Runtime's cache file) if they were measured
        under this key; None then, else why they cannot be used."""
        if not self.path.exists():
            return "no cache yet"
        from wconv_deploy.artifacts import parse_json

        try:
            doc = parse_json(read_text(self.path, what=f"--calibration-cache {self.path}", limit=MAX_CACHE_BYTES), "cache")
        except InputError as e:
            return f"unreadable: {e}"
        if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
            return "not a wconv-deploy calibration cache"
        if doc.get("version") != CACHE_VERSION:
            return f"cache version {doc.get('version')!r}, this tool writes {CACHE_VERSION}"
        cached = doc.get("key")
        if not isinstance(cached, dict):
            return "no key"
        if cached.get("model_sha256") != self.key["model_sha256"]:
            return "another model (the fp32 ONNX file's sha256 differs)"
        if cached.get("method") != self.key["method"]:
            return f"calibration method {cached.get('method')} -> {self.key['method']}"
        if cached.get("data_sha256") != self.key["data_sha256"]:
            was, now = cached.get("data"), self.key["data"]
            return f"other calibration inputs (files, subset or preprocessing): cached {was}, now {now}"
        if cached.get("onnxruntime") != self.key["onnxruntime"]:
            return f"onnxruntime {cached.get('onnxruntime')} -> {self.key['onnxruntime']}"
        tensors = doc.get("tensors")
        if not isinstance(tensors, dict):
            return "no ranges in it"
        q = require("onnxruntime.quantization.calibrate", "cpu")
        try:
            ranges_data = q.TensorsData.from_dict(tensors)
        except Exception as e:  # any malformed entry: the ranges are not usable
            return f"malformed ranges ({type(e).__name__})"
        if str(getattr(ranges_data.calibration_method, "name", "")).lower() != self.key["method"]:
            return "the ranges' calibration method differs"
        ranges.write_text(json.dumps({**tensors, "smooth_quant": False}))
        return None

    def store(self, ranges: Path) -> None:
        """Keep the ranges ONNX Runtime just wrote to ``ranges`` under this key (atomically)."""
        tensors = json.loads(ranges.read_text())  # ONNX Runtime's own file, just written
        tensors.pop("smooth_quant", None)
        doc = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": self.key, "tensors": tensors}
        write_text_atomic(self.path, json.dumps(doc))
