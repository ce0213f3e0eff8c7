"""``python -m pybench.cli``: the ``pybench`` command."""

import sys

from pybench.cli import main

if __name__ == "__main__":  # importing this module (pkgutil walks do) runs nothing
    sys.exit(main())
