"""--log mlflow: a tiny search's trials read back with MLflow's own client; a tracker that is not installed or
not known is one line before Ray starts."""
import importlib.util

import pytest

from conftest import TWO_TRIAL_SPACE, run_main
from tune import search


def test_mlflow_has_one_run_per_trial_with_params_and_epoch_metrics(tiny_imagefolder, tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[mlflow]')")
    from mlflow.tracking import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text(TWO_TRIAL_SPACE)
    code, out, err = run_main(search, ["--space", str(space), "--data", str(tiny_imagefolder), "--storage",
                                       str(tmp_path / "runs"), "--name", "tracked", "--log", "mlflow"])
    assert code == 0, out[-3000:] + err[-3000:]
    exp_dir = tmp_path / "runs" / "tracked"
    client = MlflowClient(tracking_uri=f"sqlite:///{exp_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    table = __import__("pandas").read_csv(exp_dir / "trials.csv", dtype={"trial_id": str}).set_index("trial")
    # each run named as the console and trials.csv name its trial (tune.names: #3 ef4ab16e)
    assert sorted(r.info.run_name for r in runs) == sorted(table.index) == sorted(
        f"#{row.number} {row.trial_id}" for row in table.itertuples())
    for run in runs:
        row = table.loc[run.info.run_name]
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr"]) == pytest.approx(row.lr)
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, row.epochs + 1))
        assert max(history, key=lambda m: m.step).value == pytest.approx(row.val_acc, abs=1e-6)


def test_unknown_or_missing_tracker_is_one_line_before_ray(tmp_path):
    import ray

    code, _, err = run_main(search, ["--space", "x.yaml", "--log", "mlflow,tensorbored"])
    assert code == 2 and "--log tensorbored: unknown tracker; the known ones are mlflow, wandb" in err
    if importlib.util.find_spec("wandb") is None:
        code, _, err = run_main(search, ["--space", "x.yaml", "--log", "wandb"])
        assert code == 2 and "the wandb package is not installed: pip install 'dogs-tune[wandb]'" in err
    code, _, err = run_main(search, ["--resume", "--storage", str(tmp_path), "--log", "mlflow"])
    assert code == 2 and "a resumed search logs to the trackers it was started with" in err
    assert "Traceback" not in err and not ray.is_initialized()
