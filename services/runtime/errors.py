"""Errors a stage worker turns into exit codes."""

# sysexits EX_CONFIG: supervisor lists it in exitcodes, so a misconfigured stage
# stops with a clear message instead of restart-looping.
EXIT_CONFIG = 78


class ConfigError(Exception):
    """A setting, model or optional dependency is missing or wrong; restarting will not help."""


class ModelError(Exception):
    """Base of every error about model artifacts (services/models): a stage that cannot get its
    model turns it into a ConfigError."""


class BadRequest(ValueError):
    """The request itself is unusable (wrong sample rate, unknown voice): reported, not retried."""
