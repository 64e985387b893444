"""``python -m clipkit``: the same entry point as the ``clipkit`` console script."""

from clipkit.cli import main

if __name__ == "__main__":
    main()
