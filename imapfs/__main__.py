"""Allow ``python -m imapfs``."""

from imapfs.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
