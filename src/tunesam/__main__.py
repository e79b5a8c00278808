"""``python -m tunesam`` (also what ``torchrun -m tunesam`` runs)."""
import sys

from tunesam.cli import main

sys.exit(main())
