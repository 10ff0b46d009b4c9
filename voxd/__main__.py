"""``python -m voxd ...``: the ``voxd`` command before its script is installed."""

import sys

from voxd.cli import main

sys.exit(main())
