"""`python -m persona ...` is the same as the `persona` console script."""

from persona.cli import entry_point

if __name__ == "__main__":
    entry_point()
