"""`python -m modeltrace` runs the command line."""

import sys

from modeltrace.cli import main

if __name__ == "__main__":
    sys.exit(main())
