"""The resumable-run skeleton every trainer is built on (flow matching, SRPO, and the distillation
trainers to come).

A trainer subclasses `ResumableTrainer` and writes what is its own: `train_step()` (one optimizer
step, returning its `StepMetrics`; raising `NonFiniteError` before applying a non-finite step),
`after_step(metrics)` (evaluation and stop rules, returning a `Stop` or None) and the state of its
extras (`extra_state` / `load_extra_state`). `run_resumable` owns the rest, identically for all:

    resume:    a saved state in `state_dir` is read (weights_only) and checked: every field's type and
               range, the format, the settings, and the base model it was made for (a content hash
               of a few tensors and the variant), so a state of another model is refused
    loop:      step -> after_step -> periodic save -> callback(step, total, metrics)
    stops:     a `Stop` value (non-finite, drift, no improvement), never a string to match
    interrupt: an exception from the callback (ComfyUI's interrupt) saves the state, then re-raises
    end:       a final save, so queueing the same run again resumes or finds it done
"""
from __future__ import annotations

import enum
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..io.write import atomic_write, check_writable

MAX_STEPS = 10 ** 9  # a state claiming more steps than this is not one of ours


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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read the training state {path}: {e}; delete it (or use a new output name) "
                         "to start fresh") from e
    if not isinstance(state, dict):
        raise ValueError(f"the training state {path} is not a dict of fields (found {type(state).__name__}); "
                         "delete it (or use a new output name) to start fresh")
    state["_path"] = str(path)
    return state


def _sample_bytes(t: torch.Tensor, limit: int = 1024) -> bytes:
    flat = t.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // limit)][:limit].float().cpu()
    # rounded to bf16, so the same weights loaded as bf16, fp16 or fp32 give the same identity
    return sample.to(torch.bfloat16).view(torch.int16).numpy().tobytes() if sample.numel() else b""


def base_model_identity(model, tensors: int = 8) -> dict:
    """What a resume checks the model against: the variant, the parameter count and a hash of the
    names, shapes and a sample of the values of a few tensors (cheap: no full read)."""
    state = sorted(model.state_dict().items())
    h = hashlib.sha256()
    if state:
        step = max(1, (len(state) - 1) / max(1, tensors - 1))
        for i in sorted({min(len(state) - 1, round(i * step)) for i in range(tensors)}):
            name, t = state[i]
            h.update(f"{name}{tuple(t.shape)}".encode())
            h.update(_sample_bytes(t))
    config = getattr(model, "config", None)
    return {"variant": str(getattr(config, "variant", "") or getattr(config, "model_type", "") or type(model).__name__),
            "parameters": int(sum(t.numel() for _, t in state)), "hash": h.hexdigest()[:32]}


class StateError(ValueError):
    """A saved state that is damaged, tampered with or made for something else: nothing of it was used."""


def expect(ok: bool, state: dict, what: str, expected: str, found) -> None:
    """One check of a saved state's field, with a message that says how to start fresh."""
    if not ok:
        raise StateError(f"the training state {state.get('_path', '')} is damaged or was not written for this run: "
                         f"{what}: expected {expected}, found {found!r:.200}; delete it (or use a new output name) "
                         "to start fresh")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_tensors(state: dict, key: str, like: dict) -> None:
    """state[key] is a dict of tensors with exactly `like`'s names, shapes and floating dtypes."""
    found = state.get(key)
    expect(isinstance(found, dict), state, key, "a dict of tensors", type(found).__name__)
    expect(set(found) == set(like), state, f"{key} names", f"this run's {len(like)} trainable tensors",
           sorted(set(found) ^ set(like))[:4])
    for name, t in found.items():
        expect(torch.is_tensor(t) and t.is_floating_point() and tuple(t.shape) == tuple(like[name].shape), state,
               f"{key}[{name}]", f"a float tensor of shape {tuple(like[name].shape)}",
               tuple(t.shape) if torch.is_tensor(t) else type(t).__name__)


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
    base: dict  # base_model_identity of the model as it came in, taken before training touches it

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

    def check_extra_state(self, state: dict) -> None:
        """Check every field of `extra_state` in a loaded state (types, names, shapes, ranges), raising
        StateError before anything is used."""
        raise NotImplementedError

    def load_extra_state(self, state: dict) -> None:
        raise NotImplementedError

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"format": self.STATE_FORMAT, "step": self.step, "config": self.config.resume_key(),
                "base_model": self.base, "history": [m.as_dict() for m in self.history], **self.extra_state()}

    def check_state(self, state: dict) -> None:
        """Every field of a loaded state, before any is used: StateError (or ValueError for a state of
        other settings or another model) with what was expected and what was found."""
        expect(state.get("format") == self.STATE_FORMAT, state, "format", f"{self.KIND} state format "
               f"{self.STATE_FORMAT}", state.get("format"))
        step = state.get("step")
        expect(isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= MAX_STEPS, state, "step",
               f"a whole number in [0, {MAX_STEPS}]", step)
        base = state.get("base_model")
        expect(isinstance(base, dict) and set(base) == set(self.base), state, "base_model",
               "the base model's identity", base)
        if base != self.base:
            raise ValueError(
                f"the saved {self.KIND} state in {Path(state.get('_path', '.')).parent} was made for another base "
                f"model ({base['variant']}, {base['parameters']} parameters, hash {base['hash']}) than this run's "
                f"({self.base['variant']}, {self.base['parameters']} parameters, hash {self.base['hash']}); "
                "resuming would train the old state further. Use a new output name, or delete that folder, to "
                "start fresh")
        theirs, ours = state.get("config"), self.config.resume_key()
        expect(isinstance(theirs, dict), state, "config", "a dict of settings", type(theirs).__name__)
        if theirs != ours:
            diff = {k: (theirs.get(k), ours.get(k)) for k in ours if theirs.get(k) != ours.get(k)}
            raise ValueError(f"the saved {self.KIND} state was made with other settings (saved, now): {diff}; "
                             "use a new output name or the same settings to resume")
        history = state.get("history")
        expect(isinstance(history, list) and len(history) == step, state, "history", f"a list of {step} steps",
               type(history).__name__ if not isinstance(history, list) else f"{len(history)} entries")
        for i, m in enumerate(history):
            expect(isinstance(m, dict) and set(m) == {"step", "loss", "grad_norm", "learning_rate", "extra"}
                   and all(is_number(m[k]) for k in ("step", "loss", "grad_norm", "learning_rate"))
                   and isinstance(m["extra"], dict) and all(is_number(v) for v in m["extra"].values()),
                   state, f"history[{i}]", "the metrics of one step", m)
        self.check_extra_state(state)

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
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
    if state_dir is not None:  # before step 1: a state that cannot be written is found now, not at the end
        check_writable(Path(state_dir) / trainer.STATE_FILE)
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
