"""`python -m transformer ...` runs the CLI (transformer.cli)."""
from .cli import main

raise SystemExit(main())
