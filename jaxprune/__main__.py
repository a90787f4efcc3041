"""``python -m jaxprune`` runs the demo (``python -m jaxprune.demo``)."""

from jaxprune.demo import main

if __name__ == "__main__":
    main()
