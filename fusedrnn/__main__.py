"""``python -m fusedrnn``: the ``fusedrnn`` console script."""

import sys

from .cli import main

sys.exit(main())
