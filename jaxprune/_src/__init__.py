"""Implementation modules of jaxprune; import the public names from ``jaxprune``."""
