"""Command line: `python -m wan_core selfcheck [--out DIR]`, `python -m wan_core train ...` (see
`wan_core.train_cli`; several GPUs: `torchrun --nproc_per_node N -m wan_core train ...`)."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan_core", description="wan-flow core tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("selfcheck", help="write tiny models in every checkpoint layout, reload, compare")
    check.add_argument("--out", help="folder for selfcheck.json")
    from .train_cli import add_arguments as add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train a LoRA or a full fine-tune on a latent cache "
                                       "(torchrun for several GPUs)"))
    args = parser.parse_args(argv)
    if args.command == "selfcheck":
        from .selfcheck import run_selfcheck

        return run_selfcheck(args.out)
    if args.command == "train":
        from .train_cli import run as run_training

        return run_training(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
