"""``python -m rig.presenter``: the same as ``itloop present``."""
import argparse
import sys

from rig.cli_present import add_present_arguments, run_present
from rig.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rig.presenter", description=__doc__)
    add_present_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_present(args)
    except UserError as exc:
        print(f"itloop: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
