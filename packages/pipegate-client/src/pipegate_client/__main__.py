"""``python -m pipegate_client``: the same as the ``pipegate-client`` command."""

import sys

from .cli import main

sys.exit(main())
