"""``python -m deepshrink``: the command line, as the ``deepshrink`` script runs it."""

from .cli import main

main()
