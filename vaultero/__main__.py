"""`python -m vaultero`: see vaultero.cli."""

import sys

from vaultero.cli import main

sys.exit(main())
