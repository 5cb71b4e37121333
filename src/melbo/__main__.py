"""``python -m melbo`` runs the command line (the same as the ``melbo`` console script)."""

import sys

from melbo.cli import main

sys.exit(main())
