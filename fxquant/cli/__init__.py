"""The ``fxquant`` command line: ``compress``, ``inspect``, ``eval``, ``demo``."""
