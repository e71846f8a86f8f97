"""Adapters turn a detector's raw outputs into `Detections` (boxes in original-image pixels).

Built-ins register in `ADAPTERS` by name (``yolox``, ``demo``, ``yolov5``/``yolov7``, ``yolov8``,
``boxes_scores``, ``dets_labels``; modules listed in `autoq.adapters.builtins`); a user's own adapter
is named ``package.module:attribute`` in autoq.yaml. An adapter is any callable
``(outputs, metas) -> list[Detections]`` (see `autoq.adapters.base.Adapter`): a class is
instantiated with ``model.adapter_options``, a function gets them bound as keyword arguments.

Network input size: decoders that need it (anchor grids) may define
``with_input_size(size: tuple[int, int]) -> Adapter``; the accuracy objective calls it with the
(h, w) of the images it feeds before decoding, so one adapter serves every resolution variant.
Decoders that pick outputs by name may define ``with_output_names(names) -> Adapter``
(`bind_output_names`; the pipeline passes the model's output names once).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

from autoq.adapters.base import Adapter, Detections, ImageMeta
from autoq.errors import ConfigError
from autoq.registry import Registry, accepted_options

_CALL_ARGS = ("outputs", "metas")  # call arguments, not options

__all__ = ["ADAPTERS", "Adapter", "Detections", "ImageMeta", "bind_input_size", "bind_output_names", "load_adapter"]

ADAPTERS: Registry[Any] = Registry("adapter", builtins_module="autoq.adapters.builtins")


def load_adapter(spec: str, options: Mapping[str, Any] | None = None, *, key: str = "model.adapter") -> Adapter:
    """Returns a ready adapter for ``spec`` (a registered name or ``package.module:attribute``).

    A class is instantiated with ``options``; a function gets ``options`` bound with functools.partial.

    Example:
        >>> adapter = load_adapter("yolox", {"num_classes": 80})
    """
    obj = ADAPTERS.get(spec, key=key)
    options = dict(options or {})
    if inspect.isclass(obj):
        try:
            inspect.signature(obj).bind_partial(**options)
        except TypeError as exc:
            raise ConfigError(
                f"{key}_options: {exc} for adapter {spec!r}; accepted options: {accepted_options(obj, skip=_CALL_ARGS)}"
            ) from None
        except ValueError:  # no signature available (builtin); let the constructor decide
            pass
        try:
            return obj(**options)
        except TypeError as exc:
            raise ConfigError(
                f"{key}_options: {exc} for adapter {spec!r}; accepted options: {accepted_options(obj, skip=_CALL_ARGS)}"
            ) from None
    if not callable(obj):
        raise ConfigError(f"{key}: {spec!r} is not callable; an adapter is a class or a function (outputs, metas)")
    if not options:
        return obj
    try:
        inspect.signature(obj).bind_partial(None, None, **options)
    except TypeError as exc:
        raise ConfigError(f"{key}_options: {exc} for adapter {spec!r}; accepted options: {accepted_options(obj, skip=_CALL_ARGS)}") from None
    except ValueError:
        pass
    return functools.partial(obj, **options)


def bind_input_size(adapter: Adapter, size: tuple[int, int] | None) -> Adapter:
    """The adapter told the network input (h, w), when it wants to know (``with_input_size``)."""
    if size is None:
        return adapter
    hook = getattr(adapter, "with_input_size", None)
    return hook((int(size[0]), int(size[1]))) if callable(hook) else adapter


def bind_output_names(adapter: Adapter, names: tuple[str, ...] | list[str] | None) -> Adapter:
    """The adapter told the model's output names, when it wants to know (``with_output_names``)."""
    if not names:
        return adapter
    hook = getattr(adapter, "with_output_names", None)
    return hook(tuple(names)) if callable(hook) else adapter
