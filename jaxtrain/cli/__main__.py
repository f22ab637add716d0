"""python -m jaxtrain.cli COMMAND ... (the `jaxtrain` console script)."""

import sys

from jaxtrain.cli import main

if __name__ == "__main__":
  sys.exit(main())
