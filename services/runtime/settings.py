"""Per-stage settings: S2S_<STAGE>_<KEY> from the environment, over the stage's env file.

The env file (config/<stage>.env by default) is what an operator edits to swap a backend or
model before `supervisorctl restart <stage>`; real environment variables win over it.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.runtime.errors import ConfigError


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


class StageSettings:
    """Lookup of S2S_<STAGE>_* keys with defaults and typed accessors."""

    def __init__(self, stage: str, values: dict[str, str]):
        self.stage = stage
        self.prefix = f"S2S_{stage.upper()}_"
        self._values = values

    @classmethod
    def load(cls, stage: str) -> "StageSettings":
        values: dict[str, str] = {}
        env_file = Path(os.environ.get(f"S2S_{stage.upper()}_ENV_FILE", config_dir() / f"{stage}.env"))
        if env_file.is_file():
            values.update(read_env_file(env_file))
        values.update({k: v for k, v in os.environ.items() if k.startswith("S2S_")})
        return cls(stage, values)

    def with_values(self, **values: str) -> "StageSettings":
        """A copy with some of this stage's keys set (names without the S2S_<STAGE>_ prefix)."""
        return StageSettings(self.stage, {**self._values, **{self.prefix + k: v for k, v in values.items()}})

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self._values.get(self.prefix + key)
        return default if value in (None, "") else value

    def _typed(self, key: str, default, cast, what: str):
        raw = self.get(key)
        if raw is None:
            return default
        try:
            return cast(raw)
        except ValueError:
            raise ConfigError(f"{self.prefix}{key} must be {what}, got {raw!r}") from None

    def get_int(self, key: str, default: int) -> int:
        return self._typed(key, default, int, "an integer")

    def get_float(self, key: str, default: float) -> float:
        return self._typed(key, default, float, "a number")

    def get_global(self, key: str, default: str | None = None) -> str | None:
        """A project-wide S2S_<KEY> setting (run dir, endpoints)."""
        value = self._values.get("S2S_" + key)
        return default if value in (None, "") else value
