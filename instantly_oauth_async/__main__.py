"""``python -m instantly_oauth_async``: the ``instantly-oauth`` command line."""

import sys

from ._cli import main

sys.exit(main())
