"""``python -m tdmctx`` runs the command line."""

import sys

from tdmctx.cli import main

sys.exit(main())
