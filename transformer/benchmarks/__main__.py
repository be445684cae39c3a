"""`python -m transformer.benchmarks SUITE ...` is `transformer bench SUITE ...`."""
import sys

from . import main

sys.exit(main())
