#!/usr/bin/env python3
"""Mutation testing for wan-flow: does the test suite notice a small, plausible bug?

Each mutation below is one small change a reviewer could slip into the code (a typo in a constant,
an operator the wrong way round, a step that does nothing). The tool applies them one at a time to a
temporary copy of the repository (never the working tree), runs the test files that should notice,
and reports each mutant as KILLED (some test failed) or SURVIVED (every test passed: a blind spot).
It uses nothing beyond the standard library and the project's own pytest; it does not run in CI.

Usage (from the repository root, with the project's virtual environment):

    .venv/bin/python scripts/mutation.py                   # every mutant, tests of the working tree
    .venv/bin/python scripts/mutation.py --tests HEAD      # the same mutants against the tests of a commit
    .venv/bin/python scripts/mutation.py --only ema-lerp-reversed --only vae-mean-2.1-typo
    .venv/bin/python scripts/mutation.py --list            # the mutants and their test files

Options: --timeout S (per mutant, default 1200 s: a mutant that hangs the tests counts as killed, marked
"timeout"), --baseline (first check that the unmutated copy passes every selected test file: slow),
--keep (leave the temporary copy for inspection), --json PATH (write the results).

How it works
  * The copy holds the files git knows (tracked, plus untracked ones not ignored) of the working tree,
    so product code is the working tree's. With --tests HEAD its tests/ folder is replaced by the
    committed one (`git archive HEAD tests`): the "before" measurement of a test change, without
    touching the working tree (no stash, no checkout).
  * A mutation names its file, the exact original snippet (which must occur exactly once: a stale
    mutation is reported as such rather than silently skipped) and the replacement.
  * Each mutant runs `python -m pytest -x -q` on its test files inside the copy (first failure = killed);
    test files missing from the copy (e.g. new ones under --tests HEAD) are left out, and a mutant with
    no test file left survives by definition.
  * A kill must mean something: the test that failed first is run again on the unmutated copy, and if it
    fails there too the mutant is reported INVALID (a flaky or broken test, not a kill). This costs one test
    per mutant instead of a full baseline run (--baseline adds that too: the whole union, unmutated).

Measured for issue 19 (the 30 mutants below; product code of the working tree in both runs):
    before, tests of 8401797 (`--tests 8401797`): 14 of 30 survived - vae-mean-2.1-typo, vae-std-2.2-typo,
        ema-lerp-reversed, grad-clip-off, srpo-drift-one-bound, first-frame-normaliser, atomic-write-no-chmod,
        node-a14b-drops-sigma-range, node-vae-tile-halved, rope-fp32-mode-not-float64, normalize-latent-order,
        srpo-patience-off-by-one, srpo-stop-message-drops-channel, srpo-grad-clip-off
    after, tests of the working tree: 0 of 30 survived (about 4 minutes on an idle 2-CPU machine; each
        mutant's first failing test passes unmutated)
Adding a mutation: put it in MUTATIONS with the smallest set of test files that should kill it. When
a mutant survives, write the test that kills it (or argue in the mutation's note why it is equivalent).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    mutated: str
    tests: tuple
    note: str = ""


M = Mutation
MUTATIONS: list[Mutation] = [
    # ---- the ten bugs of issue 19 ------------------------------------------------------------------
    M("vae-mean-2.1-typo", "wan_core/models/vae.py",
      '"2.1": [-0.7571, -0.7089, -0.9113,', '"2.1": [-0.7571, -0.7098, -0.9113,',
      ("tests/test_vae.py",), "two digits swapped in a Wan2.1 latent mean"),
    M("vae-std-2.2-typo", "wan_core/models/vae.py",
      '"2.2": [0.4765, 1.0364, 0.4514,', '"2.2": [0.4765, 1.0346, 0.4514,',
      ("tests/test_vae.py",), "two digits swapped in a Wan2.2 latent std"),
    M("ema-lerp-reversed", "wan_core/training/flow_matching.py",
      "self.ema[n].lerp_(p.detach().float(), 1 - cfg.ema_decay)",
      "self.ema[n].lerp_(p.detach().float(), cfg.ema_decay)",
      ("tests/test_training.py",), "EMA weight on the new value instead of the old average"),
    M("grad-clip-off", "wan_core/training/flow_matching.py",
      "if cfg.max_grad_norm > 0:\n            norm = _clip_grad_norm(",
      "if cfg.max_grad_norm < 0:\n            norm = _clip_grad_norm(",
      ("tests/test_training.py",), "flow-matching gradient clipping never applied"),
    M("srpo-restore-best-noop", "wan_core/rewards/srpo.py",
      "p.copy_(self.best[2][n].to(p.device, p.dtype))", "pass",
      ("tests/test_srpo.py",), "the stop rule reports the best step but keeps the last weights"),
    M("srpo-drift-one-bound", "wan_core/rewards/srpo.py",
      "ok = rise <= c.max_saturation_rise and shift <= c.max_channel_shift and ratio <= c.max_fm_loss_ratio",
      "ok = rise <= c.max_saturation_rise",
      ("tests/test_srpo.py",), "the held-out evaluation ignores the channel-shift and FM-loss bounds"),
    M("first-frame-normaliser", "wan_core/training/flow_matching.py",
      "(frame_mask.sum() * err.shape[1])", "(frame_mask.numel() * err.shape[1])",
      ("tests/test_training.py",), "TI2V loss divided by every frame, the clean one included"),
    M("atomic-write-no-chmod", "wan_core/io/write.py",
      "os.chmod(tmp, 0o666 & ~_umask())", "pass",
      ("tests/test_io_write.py", "tests/test_dit_loading.py"), "saved files keep mkstemp's 0600"),
    M("node-a14b-drops-sigma-range", "nodes/training.py",
      'cfg = replace(config, mode="lora", sigma_range=sigma_range)', 'cfg = replace(config, mode="lora")',
      ("tests/test_nodes_training.py",), "both A14B experts train on every noise level"),
    M("node-vae-tile-halved", "nodes/video_vae.py",
      "return (max(tile_size // s, 2),) * 2", "return (max(tile_size // (2 * s), 2),) * 2",
      ("tests/test_nodes_media.py",), "the node's tile size (pixels) is halved"),
    M("rope-fp32-mode-not-float64", "wan_core/models/dit.py",
      "math_dtype = torch.float64 if self.compute_dtype == torch.float32 else torch.float32",
      "math_dtype = torch.float32",
      ("tests/test_dit_math.py", "tests/test_dit_precision.py"), "fp32 mode rotates in fp32, not float64"),
    # ---- more, in numerically critical functions ------------------------------------------------------
    M("heun-no-average", "wan_core/sampling/solvers.py",
      "return x + dt * (v + v_next) / 2", "return x + dt * v_next",
      ("tests/test_sampling.py",), "Heun takes the end slope only"),
    M("unipc-predictor-coefficient", "wan_core/sampling/solvers.py",
      "x_t = x_t - alpha_bh * 0.5 * d1", "x_t = x_t - alpha_bh * d1",
      ("tests/test_sampling.py",), "UniPC's second-order predictor term doubled"),
    M("unipc-corrector-order1", "wan_core/sampling/solvers.py",
      "return x_t - alpha_bh * 0.5 * d_new", "return x_t - alpha_bh * d_new",
      ("tests/test_sampling.py",), "UniPC's first-order corrector term doubled"),
    M("timestep-rounded", "wan_core/sampling/solvers.py",
      "return int(np.int64(sigma * 1000))", "return int(round(sigma * 1000))",
      ("tests/test_sampling.py",), "the DiT timestep rounded instead of truncated"),
    M("cfg-chunks-swapped", "wan_core/generation/pipeline.py",
      "v_pos, v_neg = v.chunk(2)", "v_neg, v_pos = v.chunk(2)",
      ("tests/test_generation.py",), "batched CFG guides away from the prompt"),
    M("fm-loss-mean-forgets-channels", "wan_core/training/flow_matching.py",
      "per_sample = err.flatten(1).mean(1)", "per_sample = err.flatten(1).sum(1) / err[0, 0].numel()",
      ("tests/test_training.py",), "loss scaled by the channel count (Adam hides it in training)"),
    M("sigma-range-not-unshifted", "wan_core/training/flow_matching.py",
      "a, b = _unshift(lo, config.shift), _unshift(hi, config.shift)", "a, b = lo, hi",
      ("tests/test_training.py",), "the shifted σ range truncated at the wrong uniform values"),
    M("lr-warmup-off-by-one", "wan_core/training/flow_matching.py",
      "return (step + 1) / config.warmup_steps", "return step / config.warmup_steps",
      ("tests/test_training.py",), "the first warmup step has learning rate 0"),
    M("rope-rotation-reversed", "wan_core/models/dit.py",
      "sin = torch.stack([-angles.sin(), angles.sin()], dim=-1)",
      "sin = torch.stack([angles.sin(), -angles.sin()], dim=-1)",
      ("tests/test_dit_math.py",), "RoPE rotates the other way"),
    M("vae-normalize-divides", "wan_core/models/vae.py",
      "return (mu - self.latent_mean.to(mu.device, mu.dtype)) * self.latent_inv_std.to(mu.device, mu.dtype)",
      "return (mu - self.latent_mean.to(mu.device, mu.dtype)) / self.latent_inv_std.to(mu.device, mu.dtype)",
      ("tests/test_vae.py",), "normalization multiplies by std instead of dividing"),
    M("normalize-latent-order", "wan_core/models/vae.py",
      "return (raw - mean) * inv_std", "return raw * inv_std - mean",
      ("tests/test_vae.py",), "LATENT normalization (node edges) subtracts the mean after scaling"),
    M("lora-scale-sqrt-rank", "wan_core/lora/adapters.py",
      "self.scale = alpha / rank\n", "self.scale = alpha / rank ** 0.5\n",
      ("tests/test_lora.py",), "training adapters use rsLoRA's scale, files say alpha/rank"),
    M("lora-merge-ignores-scale", "wan_core/lora/merge.py",
      "return ((up @ down) * (strength * entry.scale)).reshape(param.shape)",
      "return ((up @ down) * strength).reshape(param.shape)",
      ("tests/test_lora.py",), "merging a LoRA file drops alpha / rank"),
    M("direct-align-step-sign", "wan_core/rewards/srpo.py",
      "x_target = x_start + (sigma_target - sigma_start) * velocity",
      "x_target = x_start + (sigma_start - sigma_target) * velocity",
      ("tests/test_srpo.py",), "Direct-Align's Euler step goes the wrong way"),
    M("direct-align-no-rescale", "wan_core/rewards/srpo.py",
      "return (x_target - sigma_target * noise) / (1 - sigma_target)",
      "return x_target - sigma_target * noise",
      ("tests/test_srpo.py",), "the one-step recovery forgets 1 / (1 − σ*)"),
    M("srpo-inversion-kappa-at-target", "wan_core/rewards/srpo.py",
      'self.kappa("inversion", j + d))', 'self.kappa("inversion", j))',
      ("tests/test_srpo.py",), "the inversion branch's κ read at σ* instead of its start"),
    M("srpo-patience-off-by-one", "wan_core/rewards/srpo.py",
      "if evals_since_best >= c.patience:", "if evals_since_best > c.patience:",
      ("tests/test_srpo.py",), "the stop rule waits one evaluation too many"),
    M("srpo-stop-message-drops-channel", "wan_core/rewards/srpo.py",
      "if evaluation.channel_shift > c.max_channel_shift:", "if False:",
      ("tests/test_srpo.py",), "a channel-shift stop says nothing about the channel shift"),
    M("srpo-grad-clip-off", "wan_core/rewards/srpo.py",
      "if config.max_grad_norm > 0:\n            norm = torch.nn.utils.clip_grad_norm_(",
      "if config.max_grad_norm < 0:\n            norm = torch.nn.utils.clip_grad_norm_(",
      ("tests/test_srpo.py",), "SRPO gradient clipping never applied"),
]


# --------------------------------------------------------------------------------------------
# The temporary copy
# --------------------------------------------------------------------------------------------


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


def make_copy(dest: Path, tests_from: str) -> None:
    """The working tree's files git knows (tracked + untracked, not ignored) into dest; with
    tests_from != 'worktree', tests/ comes from that commit instead."""
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file():  # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    if tests_from != "worktree":
        shutil.rmtree(dest / "tests", ignore_errors=True)
        archive = _git("archive", "--format=tar", tests_from, "tests")
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")


def run_tests(copy: Path, tests: list[str], timeout: float, stop_first: bool = True) -> tuple[str, float, str]:
    """-> (outcome: passed | failed | error | timeout, seconds, last lines of the output)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(copy),
           *(["-x"] if stop_first else []), *tests]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return "timeout", time.time() - start, out[-1500:]
    seconds = time.time() - start
    tail = (proc.stdout + proc.stderr)[-1500:]
    outcome = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
    return outcome, seconds, tail


def failing_node(tail: str) -> str | None:
    """The node id of the first failed test in pytest's short summary ("FAILED tests/x.py::test_y - ...")."""
    for line in tail.splitlines():
        if line.startswith("FAILED "):
            return line[len("FAILED "):].split(" - ")[0].strip()
    return None


def summary(tail: str) -> str:
    """pytest's last line, e.g. "29 passed in 52.1s" (a survivor's tests really ran)."""
    lines = [line.strip("= ") for line in tail.strip().splitlines()]
    return lines[-1][:160] if lines else ""


def first_failure(tail: str) -> str:
    for line in tail.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            return line[:160]
    return tail.strip().splitlines()[-1][:160] if tail.strip() else ""


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", default="worktree",
                        help="where tests/ comes from: 'worktree' (default) or a commit such as HEAD")
    parser.add_argument("--only", action="append", default=[], help="run only these mutants (repeatable)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per mutant (default 1200)")
    parser.add_argument("--baseline", action="store_true", help="first run every selected test file unmutated")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)

    selected = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutants: {sorted(unknown)}")
    if args.list:
        for m in selected:
            print(f"{m.name:34s} {m.file:38s} {' '.join(m.tests)}\n{'':34s} {m.note}")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="wanflow-mutation-"))
    copy = tmp / "repo"
    results = []
    try:
        make_copy(copy, args.tests)
        print(f"copy: {copy} (tests from {args.tests})", flush=True)

        def present(tests):
            return [t for t in tests if (copy / t).is_file()]

        if args.baseline:
            union = sorted({t for m in selected for t in present(m.tests)})
            outcome, seconds, tail = run_tests(copy, union, args.timeout * 2, stop_first=False)
            print(f"baseline ({len(union)} files): {outcome} in {seconds:.0f}s", flush=True)
            if outcome != "passed":
                print(tail)
                print("the unmutated copy does not pass its tests: kills would mean nothing; stopping")
                return 2
        for m in selected:
            path = copy / m.file
            pristine = path.read_text(encoding="utf-8")
            count = pristine.count(m.original)
            if count != 1:
                results.append(dict(name=m.name, status="stale", detail=f"original snippet found {count} times"))
                print(f"{m.name:34s} STALE (snippet found {count} times)", flush=True)
                continue
            tests = present(m.tests)
            if not tests:
                results.append(dict(name=m.name, status="survived", detail="no test file", seconds=0.0))
                print(f"{m.name:34s} SURVIVED (no test file in the copy)", flush=True)
                continue
            path.write_text(pristine.replace(m.original, m.mutated), encoding="utf-8")
            try:
                outcome, seconds, tail = run_tests(copy, tests, args.timeout)
            finally:
                path.write_text(pristine, encoding="utf-8")
            status = "survived" if outcome == "passed" else "killed"
            detail = first_failure(tail) if outcome != "passed" else summary(tail)
            if outcome in ("timeout", "error"):
                detail = f"{outcome}: {detail}"
            node = failing_node(tail) if outcome == "failed" else None
            if node is not None:  # the same test on the unmutated copy must pass, or the kill means nothing
                again, _, _ = run_tests(copy, [node], args.timeout)
                if again != "passed":
                    status, detail = "invalid", f"{node} fails unmutated too ({again})"
            results.append(dict(name=m.name, status=status, detail=detail, seconds=round(seconds, 1)))
            print(f"{m.name:34s} {status.upper():9s} {seconds:6.0f}s  {detail}", flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    survivors = [r["name"] for r in results if r["status"] == "survived"]
    stale = [r["name"] for r in results if r["status"] in ("stale", "invalid")]
    print(f"\n{len(results) - len(stale)} mutants run, {len(survivors)} survived"
          + (f": {', '.join(survivors)}" if survivors else "")
          + (f"; stale or invalid: {', '.join(stale)}" if stale else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(tests=args.tests, results=results, survivors=survivors), indent=2))
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
