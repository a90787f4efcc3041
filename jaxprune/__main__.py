"""``python -m jaxprune`` runs the demo (``python -m jaxprune.demo``)."""

import sys

from jaxprune.demo import cli

if __name__ == "__main__":
    sys.exit(cli())
