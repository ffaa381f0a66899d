"""Unit tests must never start a Ray cluster: ``ray.init`` is patched to fail."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

import pytest


def _forbidden_ray_init(*args: object, **kwargs: object) -> None:
    raise RuntimeError("unit tests must not start Ray")


@functools.cache
def _ray_module() -> ModuleType | None:
    """Import ray at most once per session (~0.7s), and only if it is installed."""
    if importlib.util.find_spec("ray") is None:
        return None
    return importlib.import_module("ray")


@pytest.fixture(autouse=True)
def _no_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = _ray_module()
    if ray is not None:
        monkeypatch.setattr(ray, "init", _forbidden_ray_init)
