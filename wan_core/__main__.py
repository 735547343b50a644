"""Command line: `python -m wan_core selfcheck [--out DIR]`, `python -m wan_core demo --out DIR [--seed N]
[--steps N] [--quick]` (train a tiny Wan DiT from scratch and sample it, see `wan_core.demo`),
`python -m wan_core train ...` (see `wan_core.train_cli`; several GPUs:
`torchrun --nproc_per_node N -m wan_core train ...`)."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan_core", description="wan-flow core tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("selfcheck", help="write tiny models in every checkpoint layout, reload, compare")
    check.add_argument("--out", help="folder for selfcheck.json")
    demo = sub.add_parser("demo", help="train a tiny Wan DiT from scratch on procedural videos (CPU, minutes), "
                          "sample held-out prompts with Euler and Heun, score them")
    demo.add_argument("--out", required=True, help="folder for report.json, the loss curve, weights and clips")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, the initial weights and the noise")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the tuned value)")
    demo.add_argument("--quick", action="store_true", help="a smoke run in seconds (tiny model, accuracy ~0)")
    from .training.cli import add_arguments as add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train a LoRA or a full fine-tune on a latent cache "
                                       "(torchrun for several GPUs)"))
    args = parser.parse_args(argv)
    if args.command == "selfcheck":
        from .testing.selfcheck import run_selfcheck

        return run_selfcheck(args.out)
    if args.command == "demo":
        from .demo.run import run_demo

        run_demo(args.out, seed=args.seed, steps=args.steps, quick=args.quick)
        return 0
    if args.command == "train":
        from .training.cli import run as run_training

        return run_training(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
