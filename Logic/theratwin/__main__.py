"""``python -m theratwin`` runs the command line."""

import sys

from .cli import main

# guarded: worker processes started with "spawn" (Dask's LocalCluster) import this module again
if __name__ == "__main__":
    sys.exit(main())
