"""``python -m benchmarks.zoo``: run the labelled zoo (see `benchmarks.zoo.run`)."""

from __future__ import annotations

import sys

from .run import main

sys.exit(main())
