"""Experiments runnable from the command line, one module each."""
