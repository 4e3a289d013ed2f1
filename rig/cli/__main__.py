"""``python -m rig.cli ARGS``: the same as ``itloop ARGS`` (e.g. ``python -m rig.cli present``)."""
import sys

from rig.cli import main

sys.exit(main())
