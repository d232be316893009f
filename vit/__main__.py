import sys

from vit.cli import main

sys.exit(main())
