"""``python -m tunesam.cli``: the same as ``tunesam`` and ``python -m tunesam``."""
import sys

from tunesam.cli import main

sys.exit(main())
