"""``python -m edgetl`` is the ``edgetl`` command."""

from edgetl.cli import main

if __name__ == "__main__":
    main()
