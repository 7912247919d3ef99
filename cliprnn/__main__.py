"""`python -m cliprnn` and the `cliprnn` script: the library's commands and the development ones."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cliprnn.cli import main as _library_main
from cliprnn.dev.cli import add_commands


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command of `python -m cliprnn` (see ``--help``)."""
    return _library_main(argv, extra=add_commands)


if __name__ == "__main__":
    sys.exit(main())
