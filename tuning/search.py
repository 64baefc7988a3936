"""Local hyperparameter search: Optuna trials run as SDK v2 local-mode training jobs.

Every trial is a real training job with the training image (``instance_type="local"``),
with its own ``LocalSession`` and container root, removed afterwards. The job's output,
the lines SageMaker's metric regexes read, streams to ``trials/trial-NNN.log`` and is parsed
as it comes: each epoch's ``val_accuracy`` goes to ``trial.report``. When the pruner calls
a trial clearly bad, its container gets ``docker stop`` (the image checkpoints on SIGTERM
and exits) and the trial is marked pruned. Trials run in parallel threads, one container
each, limited to ``cpus_per_trial`` CPUs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from common.cpus import available_cpus
from local_mode import fit as local_fit
from local_mode import session as local
from tuning.space import COURSE_SPACE, Space, suggest
from tuning.trial_log import Monitor, Router


class TrialFailed(Exception):
    """A trial's training job failed; the message says why and where its log is."""


@dataclass
class Settings:
    """What to search: image, data, trials, the space, static hyperparameters, resources."""

    image: str
    data: str
    out: Path
    trials: int = 20
    static: dict[str, str] = field(default_factory=dict)
    space: Space = COURSE_SPACE
    sampler: str = "tpe"
    seed: int | None = None
    cpus_per_trial: int = 2
    parallel: int | None = None  # None: available CPUs // cpus_per_trial
    prune_below: float = 25.0  # percentile; 0 disables pruning
    pruner: object | None = None  # any optuna pruner, instead of the one prune_below makes
    instance_type: str = "local"
    study_name: str = field(default_factory=lambda: datetime.now().strftime("tune-%Y%m%d-%H%M%S"))

    @property
    def n_jobs(self) -> int:
        """Trials at a time: as given, else as many as the CPUs allow (at least 1)."""
        if self.parallel:
            return self.parallel
        return 1 if self.instance_type == "local_gpu" else max(1, available_cpus() // self.cpus_per_trial)


def stop_trial(root: Path) -> None:
    """``docker stop`` the trial's containers: SIGTERM, checkpoint, exit (SIGKILL after 60 s)."""
    ids = local.containers(root, running=True)
    if ids:
        subprocess.run(["docker", "stop", "-t", "60", *ids], capture_output=True)


def _session(settings: Settings, root: Path):
    session = local.local_session(root)
    if settings.instance_type == "local":  # compose's `cpus`: the job sees this many (cgroup quota)
        session.config["local"]["container_config"] = {"cpus": float(settings.cpus_per_trial)}
    return session


def _run_job(trial, settings: Settings, router: Router, hyperparameters: dict, folder: Path):
    """The trial's job with its output routed to the monitor; returns (monitor, error or None)."""
    root = settings.out.resolve() / "containers" / f"trial-{trial.number:03d}"
    stop = threading.Thread(target=stop_trial, args=(root,)).start  # not on the thread that reads the output
    error = None
    with open(folder / "training.log", "w") as log:
        monitor = Monitor(trial, log, int(hyperparameters.get("epochs", 10)), stop, router.say)
        with router.routing(monitor.write):  # the SDK's own lines, too, go to the trial's log
            session = _session(settings, root)
            try:
                local_fit.fit(
                    settings.image, settings.data, hyperparameters, settings.instance_type,
                    output_path=f"file://{folder}", session=session,
                    environment={"OMP_NUM_THREADS": str(settings.cpus_per_trial)},
                    job_name=f"{settings.study_name}-{trial.number:03d}",
                )  # fmt: skip
            except Exception as exc:  # a failed job (TrainingFailed: its reason), or the stop of a pruned one
                error = exc
            finally:
                local.cleanup(session, network=False)  # search() removes the shared network at the end
    return monitor, error


def run_trial(trial, settings: Settings, router: Router, tuned: dict[str, str]) -> float:
    """Objective: one local training job; its last val_accuracy (as SageMaker's tuner uses)."""
    import optuna

    hyperparameters = settings.static | tuned
    folder = (settings.out / "trials" / f"trial-{trial.number:03d}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("hyperparameters", hyperparameters)
    trial.set_user_attr("log", str(folder / "training.log"))
    router.say(f"trial {trial.number}: started, " + " ".join(f"{k}={v}" for k, v in tuned.items()))
    started = time.monotonic()
    monitor, error = _run_job(trial, settings, router, hyperparameters, folder)
    trial.set_user_attr("history", monitor.history)
    trial.set_user_attr("duration_s", round(time.monotonic() - started, 1))
    if monitor.pruned_at is not None:
        raise optuna.TrialPruned(f"val_accuracy {monitor.history[-1]} after epoch {monitor.pruned_at}")
    if error is not None or len(monitor.history) < monitor.last_epoch:
        reason = str(error or "no val_accuracy line for every epoch")
        trial.set_user_attr("error", reason)
        raise TrialFailed(f"trial {trial.number} failed: {reason}")
    return monitor.history[-1]


def make_study(settings: Settings):
    """An Optuna study: TPE (constant liar, for parallel trials) or random, seeded; pruner."""
    import optuna

    if settings.sampler == "tpe":
        startup = max(2, min(10, settings.trials // 3))  # random trials before TPE models the results
        sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=startup, constant_liar=True)
    elif settings.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=settings.seed)
    else:
        raise ValueError(f"unknown sampler {settings.sampler!r}: tpe or random")
    # Stop a trial whose best val_accuracy so far is below the prune_below-th percentile of the
    # finished trials' values at the same epoch; from epoch 2 on, once 2 trials have finished.
    keep = 100 - settings.prune_below
    pruner = settings.pruner or (
        optuna.pruners.PercentilePruner(keep, n_startup_trials=2, n_warmup_steps=2, n_min_trials=2)
        if settings.prune_below > 0
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(study_name=settings.study_name, direction="maximize", sampler=sampler, pruner=pruner)


def search(settings: Settings):
    """Run the trials (``n_jobs`` at a time); returns the Optuna study. After Ctrl-C it
    returns the trials so far, with the study's user attribute ``interrupted`` set."""
    import optuna

    local.preflight(settings.instance_type)
    local_fit.channels_of(settings.data)  # fails early without a training folder
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress and failures: our own lines
    study = make_study(settings)
    router = Router(sys.stdout)
    sdk_log = logging.getLogger("sagemaker")  # compose files, commands, "check the troubleshooting guide"
    saved = sys.stdout, sdk_log.level
    sys.stdout = router
    sdk_log.setLevel(logging.CRITICAL)  # each trial's outcome is a line of ours, its log a file
    # Created once: parallel trials' compose files all name it, and concurrent creations race.
    if subprocess.run(["docker", "network", "inspect", local.NETWORK], capture_output=True).returncode:
        subprocess.run(["docker", "network", "create", local.NETWORK], capture_output=True, check=True)
    try:
        _run_all(study, settings, router)
    except KeyboardInterrupt:
        study.set_user_attr("interrupted", True)
    finally:
        sys.stdout = saved[0]
        sdk_log.setLevel(saved[1])
        subprocess.run(["docker", "network", "rm", local.NETWORK], capture_output=True)  # fails while in use
        with contextlib.suppress(OSError):
            (settings.out / "containers").rmdir()  # each trial removed its own container root
    return study


def _run_all(study, settings: Settings, router: Router) -> None:
    """Ask in this thread, in order (so that --seed reproduces the suggestions; optimize()
    with n_jobs > 1 reseeds the sampler per thread); run up to n_jobs trials at once."""
    n_jobs = settings.n_jobs
    with concurrent.futures.ThreadPoolExecutor(n_jobs, thread_name_prefix="trial") as pool:
        running: set[concurrent.futures.Future] = set()
        try:
            for _ in range(settings.trials):
                if len(running) >= n_jobs:
                    done, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        future.result()  # an unexpected error stops the search
                trial = study.ask()
                tuned = suggest(trial, settings.space)
                running.add(pool.submit(_run_and_tell, study, trial, settings, router, tuned))
            for future in running:
                future.result()
        except BaseException:  # Ctrl-C or an error: stop the running jobs, let their threads clean up
            router.say("stopping the running trials (their containers checkpoint on SIGTERM)")
            stop_trial(settings.out.resolve() / "containers")  # every trial's containers live under it
            raise


def _run_and_tell(study, trial, settings: Settings, router: Router, tuned: dict[str, str]) -> None:
    from optuna import TrialPruned
    from optuna.trial import TrialState

    try:
        value = run_trial(trial, settings, router, tuned)
    except TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except BaseException as exc:
        study.tell(trial, state=TrialState.FAIL)
        if not isinstance(exc, TrialFailed):
            raise
    else:
        study.tell(trial, value)
    router.say(_summary(study.get_trials(deepcopy=False)[trial.number]))


def _summary(trial) -> str:
    duration = trial.user_attrs.get("duration_s", 0)
    if trial.state.name == "COMPLETE":
        return f"trial {trial.number}: complete, val_accuracy={trial.value:.4g} ({duration:.0f} s)"
    if trial.state.name == "PRUNED":
        return f"trial {trial.number}: pruned ({duration:.0f} s)"
    error = trial.user_attrs.get("error", "")
    return f"trial {trial.number}: failed ({duration:.0f} s): {error}; log: {trial.user_attrs.get('log')}"
