"""`python -m latentspace ...` is the `latentspace` command."""

from latentspace.cli import main

main()
