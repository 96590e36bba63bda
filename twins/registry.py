"""The twin registry: twin classes by their ``kind`` (the twin contract is in ``twins/__init__.py``), and the check of
a twin's inputs every twin does."""

from __future__ import annotations

import importlib
import logging

from torch import Tensor, nn

logger = logging.getLogger(__name__)

TWIN_KINDS: dict[str, type[nn.Module]] = {}
"""Registered twin classes by their ``kind``."""

_TWIN_MODULES = ("neural", "electronic", "mechanical", "optical", "hybrid")
"""Modules of ``twins`` searched (imported) when ``twin_class`` meets a kind not yet registered."""


def register_twin(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: register a twin class under its ``kind`` class attribute.

    Raises:
        TypeError: ``cls`` has no string ``kind``.
        ValueError: another class is already registered under the same kind.
    """
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"twin class {cls.__qualname__} needs a class attribute kind: str")
    known = TWIN_KINDS.get(kind)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"twin kind {kind!r} is already registered for {known.__module__}.{known.__qualname__}")
    TWIN_KINDS[kind] = cls
    return cls


def twin_class(kind: str) -> type[nn.Module]:
    """The twin class registered under ``kind``, importing the known twin modules if needed.

    Raises:
        KeyError: no twin class is registered under ``kind`` (the message lists the known kinds).
    """
    if kind not in TWIN_KINDS:
        for module in _TWIN_MODULES:
            name = f"twins.{module}"
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as error:
                if error.name != name:  # the module exists but one of its imports is missing: a real bug
                    raise
                logger.debug("twin module %s is not available", name)
    if kind not in TWIN_KINDS:
        raise KeyError(f"unknown twin kind {kind!r} (known: {', '.join(sorted(TWIN_KINDS)) or 'none'})")
    return TWIN_KINDS[kind]


def broadcast_theta(x: Tensor, theta: Tensor, n_inputs: int, n_params: int) -> Tensor:
    """Check a twin's inputs and return theta as [B, n_params].

    Args:
        x: inputs [B, n_inputs].
        theta: parameters [B, n_params], or [n_params] shared by the batch (expanded without copying, so
            the gradient with respect to a 1-D theta is summed over the batch).
    Raises:
        ValueError: a shape does not fit the twin.
    """
    if x.dim() != 2 or x.shape[1] != n_inputs:
        raise ValueError(f"x must have shape [B, {n_inputs}], got {list(x.shape)}")
    if theta.dim() == 1:
        theta = theta.expand(x.shape[0], -1)
    if theta.dim() != 2 or theta.shape != (x.shape[0], n_params):
        raise ValueError(f"theta must have shape [{n_params}] or [{x.shape[0]}, {n_params}], got {list(theta.shape)}")
    return theta


__all__ = ["TWIN_KINDS", "broadcast_theta", "register_twin", "twin_class"]
