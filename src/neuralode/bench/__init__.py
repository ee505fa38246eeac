"""Benchmarks against torchdiffeq, torchode and SciPy (needs the ``bench`` extra installed).

``neuralode bench`` runs them; ``benchmarks/*.py`` are thin scripts around the same code.
"""
