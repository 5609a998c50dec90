"""`python -m services.models` is `s2s-models`."""

from services.models.cli import main

raise SystemExit(main())
