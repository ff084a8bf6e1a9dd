"""`python -m bingo` runs the command line."""

import sys

from bingo.cli import main

sys.exit(main())
