"""`python -m latentspace ...` is the `latentspace` command."""

from latentspace.entry import main

main()
