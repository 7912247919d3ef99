"""`python -m cliprnn`: see cliprnn.cli."""

import sys

from cliprnn.cli import main

sys.exit(main())
