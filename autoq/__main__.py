"""`python -m autoq` runs the CLI."""

import sys

from autoq.cli import main

sys.exit(main())
