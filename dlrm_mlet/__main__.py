"""``python -m dlrm_mlet`` is ``dlrm-mlet`` (handy under ``torchrun -m``)."""

import sys

from .cli import main

sys.exit(main())
