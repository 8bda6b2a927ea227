"""``python -m titanax.cli``: the ``titanax`` command."""

import sys

from titanax.cli._app import main

sys.exit(main())
