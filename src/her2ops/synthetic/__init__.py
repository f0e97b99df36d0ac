"""Synthetic IHC data for tests and the demo: stained cores, simulated pathologists, TMA slides.

Not part of the image I/O (``imaging``): it sits above ``imaging`` and ``platform`` and uses
their pure parts (stain model, the voting protocol) to make data sets whose truth is known.
"""
