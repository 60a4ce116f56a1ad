"""``python -m maskstudy.train`` (also under ``torchrun -m maskstudy.train``)."""

import sys

from .cli import main

sys.exit(main())
