"""`python -m gradsvc` is the `gradsvc` console script."""

from .cli import main

raise SystemExit(main())
