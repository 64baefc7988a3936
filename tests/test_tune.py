"""Hyperparameter tuning: SageMaker's exact tuning request, the local search's parts, and a
real 3-trial local search with the training image."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import threading
import time

import boto3
import optuna
import pytest
from botocore.stub import Stubber

from common.metrics import METRIC_DEFINITIONS, epoch_line, final_line
from local_mode import fit as local_fit
from tests.conftest import FAST
from tuning import results, search, trial_log, tune
from tuning.space import (
    COURSE_SPACE,
    Space,
    fit_to_data,
    read_hyperparameters,
    suggest,
    training_images,
    write_best,
)

IMAGE_URI = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/byoc-classifier-training:latest"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
OBJECTIVE_REGEX = r"\bval_accuracy=([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)"


@pytest.fixture
def stubbed(monkeypatch):
    """A real sagemaker.Session on a SageMaker client that answers only what the test stubs."""
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    import sagemaker

    boto = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="eu-west-1")
    client = boto.client("sagemaker")
    with Stubber(client) as stub:
        yield sagemaker.Session(boto_session=boto, sagemaker_client=client), stub
        stub.assert_no_pending_responses()


def _line(epoch: int, val_accuracy: float) -> str:
    record = {"epoch": epoch, "train_loss": 1.2, "val_loss": 1.1, "val_accuracy": val_accuracy, "lr": 0.01}
    return f"\x1b[36mabcdefghij-algo-1-xkfh2 |\x1b[0m {epoch_line(record)}"  # as docker-compose prints it


# --- cloud: the exact CreateHyperParameterTuningJob request -------------------------------


def test_cloud_tuner_sends_the_course_search_as_one_exact_request(stubbed):
    session, stub = stubbed
    prefix = "s3://bucket/caltech256"
    channel = lambda name: {  # noqa: E731
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": f"{prefix}/{name}",
                "S3DataDistributionType": "FullyReplicated",
            }
        },
    }
    expected = {
        "HyperParameterTuningJobName": "byoc-tune-1",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 20, "MaxParallelTrainingJobs": 2},
            "TrainingJobEarlyStoppingType": "Auto",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:accuracy"},
            "ParameterRanges": {
                "ContinuousParameterRanges": [
                    {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Auto"},
                    {"Name": "momentum", "MinValue": "0.5", "MaxValue": "0.9", "ScalingType": "Auto"},
                ],
                "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["32", "64", "128", "256", "512"]}],
                "IntegerParameterRanges": [],
            },
            "RandomSeed": 7,
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {"epochs": "5", "image-size": "224"},
            "RoleArn": ROLE,
            "OutputDataConfig": {"S3OutputPath": "s3://bucket/tuning"},
            "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
            "HyperParameterTuningResourceConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.g5.xlarge",
                "VolumeSizeInGB": 30,
            },
            "AlgorithmSpecification": {
                "TrainingInputMode": "File",
                "MetricDefinitions": METRIC_DEFINITIONS,
                "TrainingImage": IMAGE_URI,
            },
            "InputDataConfig": [channel("training"), channel("validation"), channel("test")],
        },
    }
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:hyper-parameter-tuning-job/byoc-tune-1"
    stub.add_response("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": arn}, expected)
    tuning = tune.tuner(
        IMAGE_URI, ROLE, "ml.g5.xlarge", max_jobs=20, max_parallel_jobs=2,
        hyperparameters={"epochs": 5, "image-size": 224}, session=session, output_path="s3://bucket/tuning", seed=7,
    )  # fmt: skip
    assert tune.start_cloud(tuning, prefix, job_name="byoc-tune-1") == "byoc-tune-1"
    # The objective's regex is the one the training image's epoch lines satisfy.
    assert {"Name": "validation:accuracy", "Regex": OBJECTIVE_REGEX} in METRIC_DEFINITIONS


def test_cloud_tuning_jobs_take_spot_limits_and_checkpoints(stubbed):
    session, stub = stubbed
    requests: list[dict] = []
    session.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker.CreateHyperParameterTuningJob", lambda params, **_: requests.append(params)
    )
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:hyper-parameter-tuning-job/byoc-tune-2"
    stub.add_response("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": arn})
    limits = local_fit.CloudLimits(spot=True, max_run=3600, max_wait=10800, checkpoint_s3_uri="s3://bucket/checkpoints")
    tuning = tune.tuner(IMAGE_URI, ROLE, session=session, output_path="s3://bucket/tuning", limits=limits)
    tune.start_cloud(tuning, "s3://bucket/caltech256", job_name="byoc-tune-2")
    (definition,) = [request["TrainingJobDefinition"] for request in requests]
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 10800}
    assert definition["CheckpointConfig"] == {"S3Uri": "s3://bucket/checkpoints"}


def test_cloud_best_becomes_a_file_that_local_mode_fit_reads(stubbed, tmp_path):
    session, stub = stubbed
    best = {
        "TrainingJobName": "byoc-tune-1-007-abc",
        "TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/byoc-tune-1-007-abc",
        "TrainingJobStatus": "Completed",
        "TunedHyperParameters": {"lr": "0.0123", "batch-size": '"64"', "momentum": "0.85"},
        "CreationTime": "2026-01-01T00:00:00Z",
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "validation:accuracy", "Value": 0.81},
    }
    described = {
        "HyperParameterTuningJobName": "byoc-tune-1",
        "HyperParameterTuningJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:hyper-parameter-tuning-job/byoc-tune-1",
        "HyperParameterTuningJobConfig": {"Strategy": "Bayesian", "ResourceLimits": {"MaxParallelTrainingJobs": 2}},
        "HyperParameterTuningJobStatus": "Completed",
        "CreationTime": "2026-01-01T00:00:00Z",
        "TrainingJobStatusCounters": {},
        "ObjectiveStatusCounters": {},
        "BestTrainingJob": best,
    }
    job = {
        "TrainingJobName": best["TrainingJobName"],
        "TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/byoc-tune-1-007-abc",
        "ModelArtifacts": {"S3ModelArtifacts": "s3://bucket/tuning/byoc-tune-1-007-abc/output/model.tar.gz"},
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "HyperParameters": {
            "epochs": '"5"',
            "lr": '"0.0123"',
            "batch-size": '"64"',
            "momentum": '"0.85"',
            "_tuning_objective_metric": '"validation:accuracy"',
            "sagemaker_estimator_class_name": '"Estimator"',
        },
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "StoppingCondition": {},
        "CreationTime": "2026-01-01T00:00:00Z",
    }
    stub.add_response("describe_hyper_parameter_tuning_job", described, {"HyperParameterTuningJobName": "byoc-tune-1"})
    stub.add_response("describe_training_job", job, {"TrainingJobName": best["TrainingJobName"]})
    path = tmp_path / "best-hyperparameters.json"
    tune.best_from_cloud("byoc-tune-1", path, session=session)
    saved = json.loads(path.read_text())
    assert saved["objective"] == {"metric": "validation:accuracy", "type": "Maximize", "value": 0.81}
    assert saved["source"]["model_data"].endswith("/byoc-tune-1-007-abc/output/model.tar.gz")
    hps = local_fit.hyperparameters_of(path, ["epochs=20"])
    assert hps == {"epochs": "20", "lr": "0.0123", "batch-size": "64", "momentum": "0.85"}


def test_command_errors_are_one_line(sample_data, capsys):
    local = ["local", "--image", "byoc-classifier-training:latest", "--data", str(sample_data)]
    with pytest.raises(SystemExit, match=r"^error: every batch size in \[512\] exceeds the 240 training images"):
        tune.main([*local, "--batch-sizes", "512"])
    with pytest.raises(SystemExit, match=r"^error: --hp takes key=value, not 'epochs'"):
        tune.main([*local, "--hp", "epochs"])
    with pytest.raises(SystemExit, match=r"^error: cloud tuning reads its data from S3"):
        tune.main(["cloud", "--image", IMAGE_URI, "--data", "data/sample", "--role", ROLE])
    with pytest.raises(SystemExit, match=r"^error: --hp lr: tuned hyperparameters take a range"):
        tune.main(["cloud", "--image", IMAGE_URI, "--data", "s3://b/p", "--role", ROLE, "--hp", "lr=0.1"])
    with pytest.raises(SystemExit, match=r"^error: momentum range ends at 1.0"):
        tune.main(["cloud", "--image", IMAGE_URI, "--data", "s3://b/p", "--role", ROLE, "--momentum", "0.5", "1"])


# --- the space and the best-hyperparameters file -----------------------------------------


def test_space_is_the_course_space_and_narrows_to_small_training_sets(sample_data):
    assert (COURSE_SPACE.lr, COURSE_SPACE.batch_sizes, COURSE_SPACE.momentum) == (
        (0.001, 0.1),
        (32, 64, 128, 256, 512),
        (0.5, 0.9),
    )
    assert training_images(str(sample_data)) == 240
    narrowed, note = fit_to_data(COURSE_SPACE, 240)
    assert narrowed.batch_sizes == (32, 64, 128) and "[256, 512]" in note
    assert fit_to_data(COURSE_SPACE, 30_000) == (COURSE_SPACE, None)
    with pytest.raises(ValueError, match="exceeds the 20 training images"):
        fit_to_data(COURSE_SPACE, 20)
    with pytest.raises(ValueError, match="lr range"):
        Space(lr=(0.1, 0.01))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    suggested = [suggest(study.ask(), narrowed) for _ in range(20)]
    assert all(narrowed.contains(s) for s in suggested)
    assert min(float(s["lr"]) for s in suggested) < 0.01 < max(float(s["lr"]) for s in suggested)  # log-uniform


def test_best_file_round_trip_into_local_mode_fit(tmp_path, capsys):
    path = tmp_path / "best.json"
    write_best(path, {"lr": 0.02, "batch-size": 64, "momentum": "0.8", "epochs": "3"}, 0.9, {"kind": "local"})
    assert read_hyperparameters(path) == {"lr": "0.02", "batch-size": "64", "momentum": "0.8", "epochs": "3"}
    merged = local_fit.hyperparameters_of(path, ["epochs=12", "image-size=224"])
    assert merged == {"lr": "0.02", "batch-size": "64", "momentum": "0.8", "epochs": "12", "image-size": "224"}
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"lr": 0.05, "pretrained": False}))
    assert local_fit.hyperparameters_of(flat, []) == {"lr": "0.05", "pretrained": "False"}
    (tmp_path / "bad.json").write_text("[1, 2]")
    argv = ["--image", "x", "--data", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"^error: .*bad.json: expected"):
        local_fit.main([*argv, "--hyperparameters-file", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match=r"^error: cannot read hyperparameters from .*missing.json"):
        local_fit.main([*argv, "--hyperparameters-file", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit, match=r"^error: --hp takes key=value, not 'epochs'"):
        local_fit.main([*argv, "--hp", "epochs"])


# --- the local search's parts ------------------------------------------------------------


def test_epoch_lines_are_read_with_the_exported_regex():
    assert trial_log.epoch_objective(_line(3, 0.65)) == (3, 0.65)
    assert trial_log.epoch_objective(epoch_line({"epoch": 12, "val_accuracy": 1e-05})) == (12, 1e-05)
    final = final_line({"best_epoch": 11, "best_val_accuracy": 0.7, "test_accuracy": 0.6})
    assert trial_log.epoch_objective(final) is None  # best_epoch= and best_val_accuracy= are not epoch lines
    assert trial_log.epoch_objective('resolved configuration: {"epochs": "3", "val_split": "0.1"}') is None
    assert trial_log.epoch_objective(epoch_line({"epoch": 2, "train_loss": 0.9})) is None  # no validation


def _finished(study, curves: list[list[float]]) -> None:
    for curve in curves:
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.01},
                distributions={"lr": optuna.distributions.FloatDistribution(0.001, 0.1)},
                value=curve[-1],
                intermediate_values={epoch: v for epoch, v in enumerate(curve, start=1)},
            )
        )


def test_monitor_reports_every_epoch_and_stops_a_clearly_bad_trial(tmp_path):
    settings = search.Settings(image="x", data="d", out=tmp_path, trials=10, seed=1)  # the default pruner
    study = search.make_study(settings)
    _finished(study, [[0.4, 0.6, 0.7, 0.8], [0.5, 0.7, 0.75, 0.8], [0.3, 0.5, 0.6, 0.7], [0.45, 0.65, 0.7, 0.75]])
    stops, log = [], io.StringIO()
    bad = trial_log.Monitor(study.ask(), log, last_epoch=4, stop=lambda: stops.append(1), say=lambda _: None)
    bad.write("Attaching to abc-algo-1\n" + _line(1, 0.1) + "\n" + _line(2, 0.2)[:20])  # a partial line
    assert bad.pruned_at is None and study.trials[4].intermediate_values == {1: 0.1}
    bad.write(_line(2, 0.2)[20:] + "\n")  # epoch 1 is never judged; epoch 2 is below the 25th percentile
    assert bad.pruned_at == 2 and stops == [1]
    bad.write(_line(3, 0.9) + "\n")  # the job is stopping: nothing more is reported
    assert bad.history == [0.1, 0.2] and stops == [1] and "Attaching" in log.getvalue()

    good = trial_log.Monitor(study.ask(), io.StringIO(), last_epoch=4, stop=lambda: stops.append(2), say=lambda _: None)
    for epoch, value in enumerate([0.4, 0.6, 0.7, 0.1], start=1):  # middling, then a bad last epoch
        good.write(_line(epoch, value) + "\n")
    assert good.pruned_at is None and stops == [1]  # the last epoch is never pruned: the job is done anyway
    assert good.history == [0.4, 0.6, 0.7, 0.1]


def test_no_pruning_before_two_trials_finished_or_when_off(tmp_path):
    study = search.make_study(search.Settings(image="x", data="d", out=tmp_path, trials=10))
    _finished(study, [[0.9, 0.9, 0.9]])
    monitor = trial_log.Monitor(study.ask(), io.StringIO(), 3, stop=lambda: None, say=lambda _: None)
    monitor.write(_line(1, 0.0) + "\n" + _line(2, 0.0) + "\n")
    assert monitor.pruned_at is None
    off = search.make_study(search.Settings(image="x", data="d", out=tmp_path, prune_below=0))
    assert isinstance(off.pruner, optuna.pruners.NopPruner)
    assert isinstance(
        search.make_study(search.Settings("x", "d", tmp_path, sampler="random")).sampler, optuna.samplers.RandomSampler
    )
    with pytest.raises(ValueError, match="unknown sampler 'grid'"):
        search.make_study(search.Settings(image="x", data="d", out=tmp_path, sampler="grid"))


def test_router_sends_each_trial_threads_output_to_its_own_sink():
    console = io.StringIO()
    router = trial_log.Router(console)
    sinks = {name: [] for name in ("a", "b")}

    def trial(name: str) -> None:
        with router.routing(sinks[name].append):
            for i in range(50):
                router.write(f"{name}{i}\n")
                time.sleep(0.001)

    threads = [threading.Thread(target=trial, args=(n,)) for n in sinks]
    for t in threads:
        t.start()
    router.say("progress")
    for t in threads:
        t.join()
    router.write("main\n")
    assert sinks["a"] == [f"a{i}\n" for i in range(50)] and sinks["b"] == [f"b{i}\n" for i in range(50)]
    assert console.getvalue() == "progress\nmain\n"


def test_search_asks_in_order_runs_in_parallel_and_records_every_outcome(tmp_path, monkeypatch):
    (tmp_path / "data" / "training").mkdir(parents=True)
    monkeypatch.setattr(search.local, "preflight", lambda instance_type: None)
    threads = set()

    def fake_trial(trial, settings, router, tuned):  # the real one runs a training job
        threads.add(threading.current_thread().name)
        trial.set_user_attr("hyperparameters", settings.static | tuned)
        time.sleep(0.05)
        if trial.number == 1:
            raise optuna.TrialPruned()
        if trial.number == 2:
            trial.set_user_attr("error", "the loss became nan in epoch 2")
            raise search.TrialFailed("trial 2 failed")
        return float(tuned["lr"])

    monkeypatch.setattr(search, "run_trial", fake_trial)
    runs = []
    for _ in range(2):
        settings = search.Settings("x", str(tmp_path / "data"), tmp_path / "out", trials=6, seed=5, parallel=3)
        runs.append(search.search(settings))
    states = [t.state.name for t in runs[0].trials]
    assert states == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert [t.params for t in runs[0].trials[:3]] == [t.params for t in runs[1].trials[:3]]  # seeded, in parallel
    completed = [float(t.user_attrs["hyperparameters"]["lr"]) for t in runs[0].trials if t.state.name == "COMPLETE"]
    assert len(threads) > 1 and runs[0].best_value == max(completed)


def test_parallel_trials_follow_the_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(search, "available_cpus", lambda: 16)
    assert search.Settings("x", "d", tmp_path, cpus_per_trial=4).n_jobs == 4
    assert search.Settings("x", "d", tmp_path, cpus_per_trial=32).n_jobs == 1
    assert search.Settings("x", "d", tmp_path, parallel=3).n_jobs == 3
    assert search.Settings("x", "d", tmp_path, instance_type="local_gpu").n_jobs == 1


def test_results_from_a_study(tmp_path):
    study = optuna.create_study(direction="maximize", study_name="s")
    for number, (state, history) in enumerate([("COMPLETE", [0.5, 0.7]), ("PRUNED", [0.2]), ("COMPLETE", [0.6, 0.8])]):
        hps = {"lr": f"0.0{number + 1}", "batch-size": "32", "momentum": "0.8", "epochs": "2"}
        study.add_trial(
            optuna.trial.create_trial(
                state=getattr(optuna.trial.TrialState, state), value=history[-1] if state == "COMPLETE" else None,
                intermediate_values=dict(enumerate(history, start=1)),
                user_attrs={"hyperparameters": hps, "history": history, "duration_s": 10.0 + number},
            )
        )  # fmt: skip
        (tmp_path / "trials" / f"trial-{number:03d}").mkdir(parents=True)
        (tmp_path / "trials" / f"trial-{number:03d}" / "model.tar.gz").write_bytes(b"model")
    best = results.write(study, tmp_path, {"kind": "local"})
    table = results.format_table(results.rows(study))
    assert table.splitlines()[0].split() == list(results.COLUMNS)
    assert table.splitlines()[2].split() == ["1", "0.02", "32", "0.8", "0.2", "1", "pruned", "11"]
    with open(tmp_path / "trials.csv") as f:
        assert [r["state"] for r in csv.DictReader(f)] == ["complete", "pruned", "complete"]
    assert json.loads((tmp_path / "trials.json").read_text())[2]["history"] == [0.6, 0.8]
    assert (tmp_path / "trials.png").stat().st_size > 10_000
    saved = json.loads(best.read_text())
    assert saved["hyperparameters"]["lr"] == "0.03" and saved["objective"]["value"] == 0.8
    assert saved["source"]["model_data"].endswith("trials/trial-002/model.tar.gz")
    assert [p.parent.name for p in tmp_path.glob("trials/*/model.tar.gz")] == ["trial-002"]  # others removed


# --- a real local search -----------------------------------------------------------------


class PruneTrial(optuna.pruners.BasePruner):
    """Prunes one given trial at its first judged epoch: makes the test's pruning certain."""

    def __init__(self, number: int):
        self.number = number

    def prune(self, study, trial) -> bool:
        return trial.number == self.number


@pytest.mark.slow
def test_three_trial_local_search_on_the_sample_data(images, sample_data, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    space = Space(batch_sizes=(16, 32))  # the sample data has 240 training images
    static = {k: v for k, v in FAST.items() if k not in ("lr", "batch-size")} | {"epochs": "2", "num-workers": "0"}
    settings = search.Settings(
        image="byoc-classifier-training:latest", data=str(sample_data), out=tmp_path / "tune", trials=3,
        static=static, space=space, sampler="tpe", seed=3, cpus_per_trial=1, parallel=2, pruner=PruneTrial(2),
    )  # fmt: skip
    started = time.monotonic()
    study = search.search(settings)
    best = results.write(study, settings.out, {"kind": "local"})
    print(f"\n{results.format_table(results.rows(study))}\n3 trials in {time.monotonic() - started:.0f} s")

    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"], [t.user_attrs for t in trials]
    tuned = [tuple(t.user_attrs["hyperparameters"][k] for k in ("lr", "batch-size", "momentum")) for t in trials]
    assert len(set(tuned)) == 3 and all(space.contains(t.user_attrs["hyperparameters"]) for t in trials)
    assert all(len(t.user_attrs["history"]) == 2 for t in trials[:2]) and len(trials[2].user_attrs["history"]) == 1
    # The pruned trial's container got SIGTERM from `docker stop` and checkpointed on its way out.
    pruned = settings.out / "trials" / "trial-002"
    assert "stopped by signal" in (local_fit.failure_reason(f"file://{pruned}", pruned) or "")

    saved = json.loads(best.read_text())
    assert space.contains(saved["hyperparameters"]) and saved["hyperparameters"]["epochs"] == "2"
    assert saved["objective"]["value"] == study.best_value and 0 <= study.best_value <= 1
    for name in ("trials.csv", "trials.json", "trials.png"):
        assert (settings.out / name).stat().st_size > 0
    assert (settings.out / "trials" / f"trial-{study.best_trial.number:03d}" / "model.tar.gz").exists()
    listed = subprocess.run(
        ["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project.working_dir"}}'],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert str(tmp_path) not in listed and not (settings.out / "containers").exists()
