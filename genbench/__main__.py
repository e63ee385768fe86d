"""``python -m genbench``: the command line."""

from genbench.cli import main

main()
