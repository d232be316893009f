"""``python -m serve MODEL``: the same as ``vit serve`` and ``vit-serve``."""

import sys

from serve.cli import main

sys.exit(main())
