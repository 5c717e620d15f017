"""``python -m clr_ext``: the ``clr-ext`` command line."""

import sys

from .apps.cli import main

sys.exit(main())
