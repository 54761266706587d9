"""`python -m latentspace.train CONFIG [key=value ...]`: the training entry point without the CLI."""

import sys

from latentspace.cli import app

if __name__ == "__main__":
    sys.exit(app(["train", *sys.argv[1:]]))
