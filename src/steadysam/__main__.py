"""``python -m steadysam`` (and ``torchrun -m steadysam``): the steadysam command line."""

import sys

from .cli import main

sys.exit(main())
