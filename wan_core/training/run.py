"""The resumable-run skeleton every trainer is built on (flow matching, SRPO, and the distillation
trainers to come).

A trainer subclasses `ResumableTrainer` and writes what is its own: `train_step()` (one optimizer
step, returning its `StepMetrics`; raising `NonFiniteError` before applying a non-finite step),
`after_step(metrics)` (evaluation and stop rules, returning a `Stop` or None) and the state of its
extras (`extra_state` / `load_extra_state`). `run_resumable` owns the rest, identically for all:

    resume:    a saved state in `state_dir` is read (weights_only) and checked (format, settings)
    loop:      step -> after_step -> periodic save -> callback(step, total, metrics)
    stops:     a `Stop` value (non-finite, drift, no improvement), never a string to match
    interrupt: an exception from the callback (ComfyUI's interrupt) saves the state, then re-raises
    end:       a final save, so queueing the same run again resumes or finds it done
"""
from __future__ import annotations

import enum
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..io.write import atomic_write


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm that is NaN or infinite: the step was not applied."""


class StopReason(enum.Enum):
    NON_FINITE = "non-finite loss or gradient"
    DRIFT = "a drift monitor left its bounds"
    NO_IMPROVEMENT = "the held-out score stopped improving"


@dataclass(frozen=True)
class Stop:
    """Why a run ended before its last step: a reason to branch on and a message to show."""

    reason: StopReason
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class StepMetrics:
    """What every trainer reports after each optimizer step (and plots; see `training.plots`).

    `extra` holds the trainer's own figures: flow matching |v_pred| / |v_target| (`v_ratio`) and
    their cosine (`v_cosine`); SRPO the reward score of the step's branches (`score`)."""

    step: int
    loss: float
    grad_norm: float
    learning_rate: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def grad_norm(params) -> torch.Tensor:
    """The global L2 norm of the parameters' gradients (0 when none has one)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


def check_finite(loss: float, norm, step: int, what: str = "loss") -> None:
    if not (math.isfinite(loss) and math.isfinite(float(norm))):
        raise NonFiniteError(f"non-finite {what} ({loss}) or gradient norm ({float(norm)}) at step {step}")


def load_state(state_dir, filename: str) -> dict | None:
    """The resumable state saved in `state_dir` (read with weights_only), or None when there is none."""
    path = Path(state_dir) / filename
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read the training state {path}: {e}") from e


class ResumableTrainer:
    """Base of every trainer: step counter, metrics history, state file, resume checks.

    Subclasses set STATE_FILE / STATE_FORMAT / KIND, build `self.config` (with `resume_key()`),
    `self.step`, `self.history`, `self.rank` / `self.world`, and implement the hooks below."""

    STATE_FILE = "state.pt"
    STATE_FORMAT = 1
    KIND = "training"

    step: int
    history: list
    rank: int = 0
    world: int = 1

    # ---- hooks ------------------------------------------------------------------------------

    def train_step(self) -> StepMetrics:
        raise NotImplementedError

    def after_step(self, metrics: StepMetrics) -> Stop | None:
        """Evaluation and stop rules after a step (none by default)."""
        return None

    def before_run(self) -> None:
        """Called once before the loop, after a resume (e.g. the baseline evaluation)."""

    def end_run(self) -> None:
        """Called when the loop ends, normally or by an exception (back to eval mode)."""

    def extra_state(self) -> dict:
        raise NotImplementedError

    def load_extra_state(self, state: dict) -> None:
        raise NotImplementedError

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"format": self.STATE_FORMAT, "step": self.step, "config": self.config.resume_key(),
                "history": [m.as_dict() for m in self.history], **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != self.STATE_FORMAT:
            raise ValueError(f"{self.KIND} state format {state.get('format')!r} is not the supported "
                             f"{self.STATE_FORMAT}")
        theirs, ours = state["config"], self.config.resume_key()
        if theirs != ours:
            diff = {k: (theirs.get(k), ours.get(k)) for k in ours if theirs.get(k) != ours.get(k)}
            raise ValueError(f"the saved {self.KIND} state was made with other settings (saved, now): {diff}; "
                             "use a new output name or the same settings to resume")
        self.load_extra_state(state)
        self.step = int(state["step"])
        self.history = [StepMetrics(**m) for m in state["history"]]

    def save(self, state_dir) -> Path:
        """Write the resumable state atomically (the previous one survives a failed write)."""
        state = self.state_dict()  # collective under FSDP: every rank must call save
        path = Path(state_dir) / self.STATE_FILE
        if self.rank == 0:
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        if self.world > 1:
            # no rank goes on (and perhaps looks for this state to resume) before it is on disk
            torch.distributed.barrier()
        return path


@dataclass
class RunOutcome:
    stopped: Stop | None = None
    checkpoint_step: int | None = None  # the step of the last resumable state written
    seconds: float = 0.0


def run_resumable(trainer: ResumableTrainer, total_steps: int, *, state_dir=None, resume: bool = True,
                  save_every: int = 0, callback=None) -> RunOutcome:
    """Drive `trainer` to `total_steps`: resume, step, evaluate, save, report, stop (module docstring).
    callback(step, total, metrics) after every step; an exception from it saves the state and re-raises."""
    started = time.perf_counter()
    outcome = RunOutcome()
    if state_dir is not None and resume:
        state = load_state(state_dir, trainer.STATE_FILE)
        if state is not None:
            trainer.load_state_dict(state)
            outcome.checkpoint_step = trainer.step
    try:
        trainer.before_run()
        while trainer.step < total_steps:
            try:
                metrics = trainer.train_step()
            except NonFiniteError as e:
                outcome.stopped = Stop(StopReason.NON_FINITE, f"{e}; training stopped, the weights of step "
                                       f"{trainer.step} are kept (the bad step was not applied)")
                break
            trainer.history.append(metrics)
            stop = trainer.after_step(metrics)
            if state_dir is not None and save_every and trainer.step % save_every == 0:
                trainer.save(state_dir)
                outcome.checkpoint_step = trainer.step
            if callback is not None:
                callback(trainer.step, total_steps, metrics)
            if stop is not None:
                outcome.stopped = stop
                break
    except BaseException:
        if state_dir is not None and trainer.step > (outcome.checkpoint_step or 0):
            trainer.save(state_dir)  # interrupted: keep what was trained, resumable
        raise
    finally:
        trainer.end_run()
    if state_dir is not None and trainer.step != outcome.checkpoint_step:
        trainer.save(state_dir)
        outcome.checkpoint_step = trainer.step
    outcome.seconds = time.perf_counter() - started
    return outcome
