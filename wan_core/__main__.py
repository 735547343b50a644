"""Command line: `python -m wan_core selfcheck [--out DIR]`."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan_core", description="wan-flow core tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("selfcheck", help="write tiny models in every checkpoint layout, reload, compare")
    check.add_argument("--out", help="folder for selfcheck.json")
    args = parser.parse_args(argv)
    if args.command == "selfcheck":
        from .selfcheck import run_selfcheck

        return run_selfcheck(args.out)
    return 2


if __name__ == "__main__":
    sys.exit(main())
