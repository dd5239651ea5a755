"""``python -m st2chip``: the same as the ``st2chip`` console script."""

import sys

from st2chip.cli.main import main

sys.exit(main())
