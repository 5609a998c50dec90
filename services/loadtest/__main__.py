"""`python -m services.loadtest` is `s2s-loadtest`."""

from services.loadtest.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
