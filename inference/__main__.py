"""``python -m inference``: the segmentation command line (see ``inference.cli``)."""

import sys

from inference.cli import main

sys.exit(main())
