"""`python -m softprompt_ext ...`: the `softprompt` command line (see `softprompt_ext.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
