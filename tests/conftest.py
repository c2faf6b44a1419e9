"""Hypothesis profile for the whole suite: a fixed number of derandomized examples (reproducible, fast CI)."""

from hypothesis import settings

settings.register_profile("ci", max_examples=10, deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci")
