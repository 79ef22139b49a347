"""`python -m pinecone_trio`: the `pinecone-trio` command (see `pinecone_trio.cli`).

The same entry point as the console script, for when the script is not on PATH (a
virtualenv not activated, `pip install --user` without ~/.local/bin on PATH).
"""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
