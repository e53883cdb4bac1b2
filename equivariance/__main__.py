"""``python -m equivariance``: the command line, as :mod:`equivariance.cli`."""

import sys

from equivariance.cli import main

sys.exit(main())
