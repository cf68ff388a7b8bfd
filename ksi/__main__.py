"""Entry point for ``python -m ksi``."""

import sys

from ksi.cli import main

sys.exit(main())
