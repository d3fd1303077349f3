"""`python -m modeltrace` runs the command line."""

from modeltrace.cli import main

if __name__ == "__main__":
    main()
