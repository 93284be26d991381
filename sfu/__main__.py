"""``python -m sfu``: the same CLI as the ``sfu`` console script."""

import sys

from sfu.cli import main

if __name__ == "__main__":
    sys.exit(main())
