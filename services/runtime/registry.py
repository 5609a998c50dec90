"""Backends chosen by name, imported only when chosen (heavy optional dependencies)."""

from __future__ import annotations

import importlib

from services.runtime.errors import ConfigError


def backend_class(stage: str, name: str, table: dict[str, str]) -> type:
    """`table` maps backend name -> "module:Class"."""
    if name not in table:
        raise ConfigError(f"unknown {stage} backend {name!r}; choose one of: {', '.join(sorted(table))}")
    module_name, _, class_name = table[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{stage} backend {name!r} needs a package that is not installed: {exc}") from None
    return getattr(module, class_name)
