"""`python -m tools.loadtest` is `s2s-loadtest`."""

from tools.loadtest.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
