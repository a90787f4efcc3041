"""Worked examples built on jaxprune (importable code, thin entry points)."""
