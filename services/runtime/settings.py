"""Settings: S2S_<SCOPE>_<KEY> from the environment; a stage's also from its env file.

Each setting is declared once, as a Setting (its key, type, default and doc), by the module that
reads it; scripts/settings_docs.py writes config/<stage>.env and the README's settings table from
those declarations (tests/test_settings_docs.py checks they match).

The env file (config/<stage>.env by default) is what an operator edits to swap a backend or
model before `supervisorctl restart <stage>`; real environment variables win over it. The gateway
has no env file: its settings come from the environment only (supervisord.conf's `environment=`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Generic, TypeVar, Union

from services.runtime.errors import ConfigError

T = TypeVar("T", str, int, float)
_WHAT = {int: "an integer", float: "a number", str: "text"}


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting, declared once. key: without the S2S_<SCOPE>_ prefix; default: what the code uses
    when nothing sets it (None: unset); doc: the README's one line about it; default_doc: how the
    README states a default that is not one value."""

    key: str
    type: type[T]
    default: T | None
    doc: str
    default_doc: str | None = None

    def parse(self, raw: str, prefix: str) -> T:
        try:
            return self.type(raw)
        except ValueError:
            raise ConfigError(f"{prefix}{self.key} must be {_WHAT[self.type]}, got {raw!r}") from None


@dataclass(frozen=True)
class EnvLine:
    """A line of a stage's env file (config/<stage>.env, written by scripts/settings_docs.py): the
    setting, set to value (None: its default), under a comment (note); commented: shown, not set."""

    setting: Setting
    value: str | None = None
    note: str = ""
    commented: bool = False

    def text(self) -> str:
        value = self.value if self.value is not None else self.setting.default
        if value is None:
            return ""
        return f"{value:g}" if isinstance(value, float) else str(value)  # 60.0 -> 60


def config_dir() -> Path:
    return Path(os.environ.get("S2S_CONFIG_DIR", Path(__file__).resolve().parents[2] / "config"))


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped; optional quotes stripped."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def _s2s_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("S2S_")}


class Settings:
    """Lookup of S2S_<SCOPE>_* keys (and project-wide S2S_* ones) with typed accessors."""

    def __init__(self, scope: str, values: dict[str, str]):
        self.scope = scope
        self.prefix = f"S2S_{scope.upper()}_"
        self._values = values

    @classmethod
    def from_environment(cls, scope: str) -> "Settings":
        return cls(scope, _s2s_environment())

    def value(self, setting: Setting[T]) -> T | None:
        """The declared setting, typed; its default when unset or empty."""
        raw = self.get(setting.key)
        return setting.default if raw is None else setting.parse(raw, self.prefix)

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self._values.get(self.prefix + key)
        return default if value in (None, "") else value

    def get_int(self, key: str, default: int | None) -> int | None:
        """An undeclared integer setting (prefer a declared Setting and value())."""
        return self.value(Setting(key, int, default, ""))

    def get_float(self, key: str, default: float | None) -> float | None:
        return self.value(Setting(key, float, default, ""))

    def get_global(self, key: str, default: str | None = None) -> str | None:
        """A project-wide S2S_<KEY> setting (run dir, endpoints)."""
        value = self._values.get("S2S_" + key)
        return default if value in (None, "") else value


class StageSettings(Settings):
    """A stage's settings: the environment over its env file."""

    @property
    def stage(self) -> str:
        return self.scope

    @classmethod
    def load(cls, stage: str) -> "StageSettings":
        values: dict[str, str] = {}
        env_file = Path(os.environ.get(f"S2S_{stage.upper()}_ENV_FILE", config_dir() / f"{stage}.env"))
        if env_file.is_file():
            values.update(read_env_file(env_file))
        values.update(_s2s_environment())
        return cls(stage, values)

    def with_values(self, **values: str) -> "StageSettings":
        """A copy with some of this stage's keys set (names without the S2S_<STAGE>_ prefix)."""
        return StageSettings(self.stage, {**self._values, **{self.prefix + k: v for k, v in values.items()}})


# Where a project-wide S2S_<KEY> setting (run dir, endpoints, CURVE keys) is read: a process's
# settings (a worker's env file included), a mapping (a test's environment), or the process
# environment (None).
Source = Union[Mapping[str, str], Settings, None]


def project_value(source: Source, key: str) -> str | None:
    """S2S_<KEY> from the source; None when unset or empty."""
    if isinstance(source, Settings):
        return source.get_global(key)
    return (os.environ if source is None else source).get("S2S_" + key) or None


# --- settings that are dataclass fields (the gateway's) ------------------------------------------


def setting(default, doc: str, *, default_doc: str | None = None, items=None):
    """A dataclass field that is a setting, S2S_<SCOPE>_<its name upper-cased>. items: for a tuple,
    how each comma-separated item is read."""
    return field(default=default, metadata={"setting": (doc, default_doc, items)})


def dataclass_settings(cls, key_prefix: str = "") -> dict[str, Setting]:
    """The settings a dataclass declares with setting(), by field name."""
    out = {}
    for f in fields(cls):
        if "setting" not in f.metadata:
            continue
        doc, default_doc, _ = f.metadata["setting"]
        listed = isinstance(f.default, tuple)  # comma-separated; none by default
        out[f.name] = Setting(key_prefix + f.name.upper(), str if listed else type(f.default),
                              None if listed else f.default, doc, default_doc=default_doc)
    return out


def read_dataclass(cls, settings: Settings, key_prefix: str = "", **values):
    """cls with each setting() field read from settings, the others from values or their defaults."""
    declared = dataclass_settings(cls, key_prefix)
    for f in fields(cls):
        if f.name not in declared:
            continue
        item = f.metadata["setting"][2]
        if item is not None:
            raw = settings.get(declared[f.name].key) or ""
            values[f.name] = tuple(item(x.strip()) for x in raw.split(",") if x.strip())
        else:
            values[f.name] = settings.value(declared[f.name])
    return cls(**values)
