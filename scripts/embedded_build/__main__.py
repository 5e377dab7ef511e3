"""`python -m scripts.embedded_build [corpus | cards] ...`: the one entry point of the embedded build."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["corpus"]:
        from .corpus import main as corpus_main

        return corpus_main(argv[1:])
    if argv[:1] == ["cards"]:
        from .card_text import main as cards_main

        return cards_main(argv[1:])
    from .build import main as build_main

    try:
        return build_main(argv)
    except ValueError as err:  # a user error: one line, exit status 2
        print(f"embedded_build: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
