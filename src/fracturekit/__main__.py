"""``python -m fracturekit`` (also what ``torchrun -m fracturekit train ...`` starts)."""

import sys

from fracturekit.cli import main

sys.exit(main())
