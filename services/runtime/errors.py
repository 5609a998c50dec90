"""Errors a stage worker turns into exit codes."""

# sysexits EX_CONFIG: supervisor lists it in exitcodes, so a misconfigured stage
# stops with a clear message instead of restart-looping.
EXIT_CONFIG = 78


class ConfigError(Exception):
    """A setting, model or optional dependency is missing or wrong; restarting will not help."""


class BadRequest(ValueError):
    """The request itself is unusable (wrong sample rate, unknown voice): reported, not retried."""
