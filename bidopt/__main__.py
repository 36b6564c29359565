"""``python -m bidopt ...`` is the ``bidopt`` command (e.g. the Ray job ``python -m bidopt optimizer run``)."""

from bidopt.cli.main import cli

if __name__ == "__main__":
    cli()
