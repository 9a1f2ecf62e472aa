"""The model registry: ``@register_model`` names a builder, ``create_model`` calls it.

``zoo:NAME?key=value&...`` strings (accepted wherever a MODEL is) are parsed here: values are
read as int, float, bool (``true``/``false``) or a comma list of floats (``den=0.5,1.0``), and
passed to the builder as keyword arguments, so ``zoo:dncnn?depth=10&width=32&den=0.7`` is
``create_model("dncnn", depth=10, width=32, den=0.7)``.

A leaf: it imports nothing from the zoo and not torch. The model modules import it to register
their builders, and :mod:`wconv_deploy.zoo` imports them, so every model is registered before
anything asks the registry (as in timm).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from wconv_deploy.errors import InputError
from wconv_deploy.reports import Report
from wconv_deploy.table import format_table

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[..., "nn.Module"]


@dataclass(frozen=True)
class ZooEntry:
    """A registered model: its builder, a one-line description and the input it expects."""

    name: str
    builder: Builder
    description: str
    input_shape: str  # the --input-shape used when none is given
    dynamic: str | None = None  # the --dynamic used when none is given

    def options(self) -> dict[str, Any]:
        """The builder's keyword arguments and their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.builder).parameters.values()
            if p.default is not inspect.Parameter.empty
        }


_REGISTRY: dict[str, ZooEntry] = {}


def register_model(name: str, *, description: str, input_shape: str, dynamic: str | None = None) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under ``name`` (names are unique)."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"zoo model {name!r} is registered twice")
        _REGISTRY[name] = ZooEntry(name, builder, description, input_shape, dynamic)
        return builder

    return decorate


def list_models() -> list[ZooEntry]:
    """Every registered model, by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def get_entry(name: str) -> ZooEntry:
    """The registered model ``name`` (InputError naming the known ones if there is none)."""
    if name not in _REGISTRY:
        raise InputError(f"zoo: no model named {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


@dataclass
class ZooModelInfo:
    """One model as ``zoo list`` shows it: options are the builder's defaults, as Python writes them."""

    name: str
    description: str
    input_shape: str
    dynamic: str | None
    options: dict[str, str]


@dataclass
class ZooListing(Report):
    """Every registered model with its default input and options (``wconv-deploy zoo list``)."""

    models: list[ZooModelInfo]

    def render(self) -> str:
        rows = [[m.name, m.input_shape + (f" ({m.dynamic})" if m.dynamic else ""), m.description] for m in self.models]
        lines = [format_table(["model", "input (dynamic)", "description"], rows), "", "options (zoo:NAME?option=value&...):"]
        lines += [f"  {m.name}: " + ", ".join(f"{k}={v}" for k, v in m.options.items()) for m in self.models]
        return "\n".join(lines)


def zoo_listing() -> ZooListing:
    """The zoo as a report; neither torch nor any network is imported to make it."""
    return ZooListing(
        [
            ZooModelInfo(e.name, e.description, e.input_shape, e.dynamic, {k: repr(v) for k, v in e.options().items()})
            for e in list_models()
        ]
    )


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` (InputError for unknown names or options)."""
    entry = get_entry(name)
    unknown = sorted(set(kwargs) - set(entry.options()))
    if unknown:
        raise InputError(f"zoo:{name}: unknown option(s) {', '.join(unknown)} (options: {', '.join(entry.options())})")
    try:
        model = entry.builder(**kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"zoo:{name}: {e}") from None
    _check_den_used(name, kwargs.get("den"), model)
    return model


def _check_den_used(name: str, den: Any, model: nn.Module) -> None:
    """A density given for a kernel size the model does not have would silently do nothing."""
    from wconv_deploy.nn import WeightedConvNd

    if den is None:
        return
    given = {int(k) for k in den} if isinstance(den, dict) else {3 if isinstance(den, (int, float)) else 2 * len(den) + 1}
    sizes = {m.kernel_size[0] for m in model.modules() if isinstance(m, WeightedConvNd)}
    unused = sorted(k for k in given if k not in sizes)
    if unused and sizes:
        raise InputError(
            f"zoo:{name}: den sets {', '.join(f'{k}x{k}' for k in unused)} kernels, but the model's weighted "
            f"kernels are {', '.join(f'{k}x{k}' for k in sorted(sizes))}"
        )


def parse_zoo_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """``zoo:NAME?k=v&...`` -> (NAME, {k: typed v})."""
    if not uri.startswith("zoo:"):
        raise InputError(f"{uri!r} is not a zoo:NAME reference")
    name, _, query = uri[4:].partition("?")
    if not name:
        raise InputError(f"{uri!r}: missing the model name after zoo:")
    kwargs: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        kwargs[key] = _typed(key, value)
    return name, kwargs


def default_spec_args(uri: str) -> tuple[str, str | None]:
    """The ``--input-shape`` and ``--dynamic`` a zoo model is exported with when none are given."""
    entry = get_entry(parse_zoo_uri(uri)[0])
    return entry.input_shape, entry.dynamic


def zoo_digest(uri: str, model: nn.Module) -> str:
    """A sha256 over the model's state (what an artifact was built from)."""
    h = hashlib.sha256(uri.encode())
    for key, t in model.state_dict().items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _typed(key: str, value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if "," in value:
        try:
            return tuple(float(v) for v in value.split(","))
        except ValueError:
            pass
    if not value:
        raise InputError(f"zoo option {key!r} has no value")
    return value
