"""Reading ONNX files and their metadata safely: the one place that opens them.

An ONNX file is untrusted input. :func:`read_onnx` opens it as a regular file only, turns every
parse failure into an :class:`InputError`, and checks every tensor stored as external data
(initializers *and* tensors inside node attributes, such as ``Constant`` values, in every
subgraph): each must name a relative path that resolves to a regular file inside the model's
folder. A model whose external data points at ``../../etc/shadow`` or a symlink to a secret is
refused before anything reads, copies or hashes that file. :func:`json_metadata` parses the JSON
we store in ``metadata_props`` with limits (size, nesting), so hostile metadata is one line too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from wconv_deploy.errors import InputError
from wconv_deploy.fileio import open_regular, regular_file

#: Our keys in an ONNX file's ``metadata_props`` start with this.
METADATA_PREFIX = "wconv_deploy."
#: Our metadata values are small JSON documents; anything larger or deeper is not ours.
MAX_METADATA_CHARS = 1 << 20
MAX_JSON_DEPTH = 64


def read_onnx(path: str | os.PathLike[str], *, load_external_data: bool = False) -> Any:
    """The ``onnx.ModelProto`` in ``path``; external data checked (and loaded when asked)."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    with open_regular(p) as f:
        data = f.read()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RecursionError, RuntimeError) as e:
        raise InputError(f"{p} is not a readable ONNX file ({type(e).__name__})") from None
    files = external_data_files(model, p)
    if load_external_data and files:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, os.fspath(p.parent))
    return model


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of the model: initializers, sparse initializers and attribute tensors, in
    every (nested) subgraph; iterative, so a graph nested 100k deep cannot overflow the stack."""
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def external_data_files(model: Any, path: str | os.PathLike[str]) -> list[str]:
    """The external data files (relative locations) the model at ``path`` uses, each checked to be
    a regular file inside the model's folder; InputError for any that is not."""
    import onnx

    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    found: set[str] = set()
    for t in _tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in t.external_data}
        location = entries.get("location", "")
        where = f"{p.name}: tensor {t.name!r} stores its data in {location!r}"
        rel = PurePosixPath(location.replace("\\", "/"))
        if not location or rel.is_absolute() or ".." in rel.parts or location.startswith("~"):
            raise InputError(f"{where}: external data must be a file inside the model's folder")
        regular_file(folder / location, within=folder, what=where)
        found.add(location)
    return sorted(found)


def wconv_metadata(model: Any) -> dict[str, str]:
    """The model's ``wconv_deploy.*`` metadata entries (InputError for oversized values)."""
    props = {}
    for p in model.metadata_props:
        if p.key.startswith(METADATA_PREFIX):
            if len(p.value) > MAX_METADATA_CHARS:
                raise InputError(f"metadata {p.key}: {len(p.value)} characters; not metadata wconv-deploy wrote")
            props[p.key] = p.value
    return props


def json_metadata(model: Any, key: str, where: str) -> Any:
    """The JSON value stored under ``wconv_deploy.KEY`` (None if absent), parsed with limits: not
    larger than MAX_METADATA_CHARS, not nested deeper than MAX_JSON_DEPTH, no NaN or infinity."""
    text = wconv_metadata(model).get(METADATA_PREFIX + key)
    if text is None:
        return None
    return parse_json(text, f"{where}: metadata {METADATA_PREFIX}{key}")


def parse_json(text: str, where: str) -> Any:
    """JSON from an untrusted file: InputError unless it is finite and at most MAX_JSON_DEPTH deep."""
    depth = 0
    for ch in text:  # brackets inside strings count too: a cheap, safe over-estimate
        if ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise InputError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels; not a file wconv-deploy wrote")
        elif ch in "]}":
            depth -= 1

    def finite(value: str) -> float:
        number = float(value)
        if number in (float("inf"), float("-inf")):
            raise ValueError(f"the number {value} is out of range")
        return number

    def refuse(value: str) -> float:
        raise ValueError(f"{value} is not a number JSON allows")

    try:
        return json.loads(text, parse_float=finite, parse_constant=refuse)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{where}: not valid JSON ({e})") from None
