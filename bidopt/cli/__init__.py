"""The ``bidopt`` command line."""
