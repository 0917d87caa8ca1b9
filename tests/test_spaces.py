"""Search-space files: every mistake is refused with the file, the key and what is allowed; conditions hold."""
import pickle

import optuna
import pytest
import yaml
from hypothesis import given, strategies as st

from dogs.config import resolve
from tune import space_values, settings, spaces

optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = """
search:
  samples: 8
  epochs: 3
params:
  image_size: 32
  model: {choice: [cnn, resnet18, resnet34]}
  unfreeze: {int: [0, 3], when: {model: [resnet18, resnet34]}}
  backbone_lr: {loguniform: [1e-5, 1e-3], when: {unfreeze: [1, 2, 3]}}
  head_on: {value: logits, when: {model: resnet18}}
  lr: {loguniform: [1e-4, 1e-2]}
  dropout: {quniform: [0.0, 0.6, 0.1]}
  batch_size: {randint: [8, 10]}
"""


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(spaces.SpaceError) as info:
        spaces.load(path)
    message = str(info.value)
    assert str(path) in message  # every message names the file
    return message


@pytest.mark.parametrize("text, expected", [
    # unknown keys: top level, search settings, config keys
    ("serch: {samples: 3}\n", ["serch", "allowed", "params"]),
    ("search: {sampels: 3}\n", ["search.sampels", "unknown setting", "samples"]),
    ("params: {learning_rate: 0.1}\n", ["params.learning_rate", "unknown config key", "lr"]),
    # wrong types
    ("search: {samples: many}\n", ["search.samples", "wrong type", "integer"]),
    ("params: {batch_size: 3.5}\n", ["params.batch_size", "wrong type", "an integer"]),
    ("params: {augment: {choice: [true, sometimes]}}\n", ["params.augment", "'sometimes'", "true or false"]),
    ("params: {lr: {loguniform: [small, 1e-2]}}\n", ["params.lr.loguniform", "[low, high]"]),
    ("params: {batch_size: {int: [8.5, 64]}}\n", ["params.batch_size.int", "integers"]),
    # bounds
    ("params: {lr: {uniform: [0.1, 0.01]}}\n", ["params.lr.uniform", "low 0.1 >= high 0.01", "low < high"]),
    ("params: {lr: {loguniform: [0, 0.1]}}\n", ["params.lr.loguniform", "log-scale", "> 0"]),
    ("params: {dropout: {quniform: [0, 0.5, 0]}}\n", ["params.dropout.quniform", "step q must be > 0"]),
    ("params: {unfreeze: {int: [0, 7]}}\n", ["params.unfreeze", "0..5"]),
    ("params: {model: {choice: [cnn, resnet-18]}}\n", ["params.model", "resnet-18", "resnet18"]),
    # distributions
    ("params: {lr: {gaussian: [0, 1]}}\n", ["params.lr", "loguniform", "choice"]),
    ("params: {lr: {uniform: [0, 1], loguniform: [1, 2]}}\n", ["params.lr", "not one distribution"]),
    ("params: {epochs: {int: [1, 5]}}\n", ["params.epochs", "search.epochs"]),
    # conditions
    ("params:\n  unfreeze: {int: [0, 3], when: {modle: resnet18}}\n",
     ["params.unfreeze.when", "unknown parameter 'modle'"]),
    ("params:\n  unfreeze: {int: [0, 3], when: {model: resnet18}}\n  model: {choice: [cnn, resnet18]}\n",
     ["params.unfreeze.when", "unknown parameter 'model'", "declared above"]),
    ("params:\n  model: {choice: [cnn, resnet18]}\n  unfreeze: {int: [0, 3], when: {model: resnet50}}\n",
     ["params.unfreeze.when.model", "resnet50", "can never happen"]),
    # settings
    ("search: {epochs: 3, grace_period: 5}\n", ["search.grace_period", "5 > epochs 3"]),
    ("search: {mode: maximise}\n", ["search.mode", "['max', 'min']"]),
    ("search: {metric: accuracy}\n", ["search.metric", "val_acc"]),
    ("search: {reduction_factor: 1}\n", ["search.reduction_factor", "> 1"]),
    ("search: {sampler: cmaes}\n", ["search.sampler", "'cmaes'", "['tpe', 'random', 'qmc', 'gp']"]),
    ("search: {scheduler: hyperband}\n", ["search.scheduler", "['asha', 'fifo']"]),
    ("search: {time_budget: 30x}\n", ["search.time_budget", "'30x'", "30m"]),
    ("search: {time_budget: 0}\n", ["search.time_budget", "'0s'", "positive"]),
    ("search: {fidelity: seconds}\n", ["search.fidelity", "'seconds'", "['epochs', 'time']"]),
    ("search: {fidelity: time}\n", ["search.fidelity", "no time_budget", "30m"]),
    ("search: {fidelity: time, time_budget: 10m, scheduler: fifo}\n", ["search.fidelity", "fifo has no rungs"]),
    # first trials
    ("params: {lr: {loguniform: [1e-4, 1e-2]}}\nfirst_trials: [{lr: 1.0}]\n", ["first_trials[0].lr", "[0.0001, 0.01]"]),
    ("params: {lr: 1e-3}\nfirst_trials: [{lr: 1e-3}]\n", ["first_trials[0].lr", "not a searched parameter"]),
])
def test_every_mistake_names_file_key_and_what_is_allowed(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    for part in expected:
        assert part.lower() in message.lower(), message


def test_invalid_yaml_not_utf8_and_missing_file_are_one_line(tmp_path):
    message = error_of(tmp_path, "params: {lr: [1,\n")
    assert "not valid YAML: line 2, column 1:" in message and "\n" not in message, message
    path = tmp_path / "latin1.yaml"
    path.write_bytes("params: {model: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(spaces.SpaceError, match=r"latin1.yaml: not a text file in UTF-8 \(byte 19: ") as err:
        spaces.load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(spaces.SpaceError, match="no such file.*cnn_scratch.yaml"):
        spaces.find_space_file("no_such_space.yaml")


def test_scientific_notation_is_a_number(tmp_path):
    # plain PyYAML reads 1e-4 as a string; a space file means the number
    space = spaces.load(write(tmp_path, "params: {lr: {loguniform: [1e-4, 1E-2]}, weight_decay: 5e-4}\n"))
    lr = next(p for p in space["params"] if p["name"] == "lr")
    assert lr["args"] == [1e-4, 1e-2]
    assert next(p for p in space["params"] if p["name"] == "weight_decay")["args"] == 5e-4


def test_command_line_overrides_win_and_are_checked(tmp_path):
    path = write(tmp_path, GOOD)
    space = spaces.load(path, overrides={"samples": 2, "epochs": None, "seed": 7}, sets={"model": "cnn"})
    assert space["search"]["samples"] == 2 and space["search"]["epochs"] == 3 and space["search"]["seed"] == 7
    assert "model" not in spaces.searched_names(space)
    with pytest.raises(spaces.SpaceError, match="search.gpus_per_trial"):
        spaces.load(path, overrides={"gpus_per_trial": -1})
    with pytest.raises(spaces.SpaceError, match="params.model"):
        spaces.load(path, sets={"model": "vgg"})


def test_a_relative_weights_file_or_cache_dir_is_made_absolute_where_it_is_given(tmp_path, monkeypatch):
    # trials run in folders of their own: a relative weights path named no file there, and every trial errored
    monkeypatch.chdir(tmp_path)
    mine = str(tmp_path / "mine.pth")
    space = spaces.load(write(tmp_path, "params: {lr: {loguniform: [1e-4, 1e-2]}, weights: {choice: [mine.pth, DEFAULT]}}\n"))
    assert next(p for p in space["params"] if p["name"] == "weights")["args"] == [mine, "DEFAULT"]
    space = spaces.load(write(tmp_path, GOOD), sets={"weights": "sub/other.pt"})
    assert next(p for p in space["params"] if p["name"] == "weights")["args"] == str(tmp_path / "sub" / "other.pt")
    # dogs.train --set / --config: resolved where the command runs, so its checkpoints load from anywhere
    assert resolve({"weights": "mine.pth"})["weights"] == mine
    assert resolve({"weights": "DEFAULT"})["weights"] == "DEFAULT" and resolve({"weights": "none"})["weights"] == "none"
    # a relative cache_dir: each trial decoded into a cache of its own, inside its trial folder
    space = spaces.load(write(tmp_path, GOOD), sets={"cache_dir": "cache"})
    assert next(p for p in space["params"] if p["name"] == "cache_dir")["args"] == str(tmp_path / "cache")
    assert resolve({"cache_dir": "cache"})["cache_dir"] == str(tmp_path / "cache") and resolve()["cache_dir"] is None


def test_a_space_searched_with_a_set_that_a_when_names_reads_back(tmp_path):
    # resnet_unfreeze.yaml with --set model=resnet18: its saved space said `when: {model: [resnet18, resnet34]}`
    # under `model: resnet18`, and tune.best / --resume refused it ("['resnet34'] can never happen")
    text = ("params:\n  model: {choice: [cnn, resnet18, resnet34]}\n  lr: {loguniform: [1e-4, 1e-2]}\n"
            "  unfreeze: {int: [0, 3], when: {model: [resnet18, resnet34]}}\n")
    for model, when in (("resnet18", ["resnet18"]), ("cnn", [])):
        space = spaces.load(write(tmp_path, text), sets={"model": model})
        saved = spaces.load(write(tmp_path, spaces.to_yaml(space), "saved.yaml"))
        assert saved["params"] == space["params"]
        assert next(p for p in saved["params"] if p["name"] == "unfreeze")["when"] == {"model": when}
        drawn = sample(saved, 3)
        assert all(("unfreeze" in config) == (model == "resnet18") for config in drawn)


def sample(space, n, seed=0):
    """n configs from the define-by-run function with a seeded TPE study (as tune.study_searcher asks them)."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    suggest = space_values.optuna_space(space)
    configs = []
    for i in range(n):
        trial = study.ask()
        fixed = suggest(trial)
        configs.append({**trial.params, **fixed})
        study.tell(trial, float(i % 3))
    return configs


def test_conditional_space_samples_unfreeze_only_for_resnets(tmp_path):
    configs = sample(spaces.load(write(tmp_path, GOOD)), 40)
    models = {c["model"] for c in configs}
    assert models == {"cnn", "resnet18", "resnet34"}
    for c in configs:
        is_resnet = c["model"] != "cnn"
        assert ("unfreeze" in c) == is_resnet, c
        assert ("backbone_lr" in c) == (is_resnet and c["unfreeze"] >= 1), c
        assert ("head_on" in c) == (c["model"] == "resnet18"), c
        assert c["image_size"] == 32
        assert 1e-4 <= c["lr"] <= 1e-2
        assert c["batch_size"] in (8, 9)  # randint: high excluded
        assert round(c["dropout"] * 10, 6) == int(round(c["dropout"] * 10)) and 0 <= c["dropout"] <= 0.6


def test_same_seed_same_configs_and_the_function_pickles(tmp_path):
    space = spaces.load(write(tmp_path, GOOD))
    assert sample(space, 12, seed=3) == sample(space, 12, seed=3)
    assert sample(space, 12, seed=3) != sample(space, 12, seed=4)
    again = pickle.loads(pickle.dumps(space_values.optuna_space(space)))
    assert again.args == (space["params"],)


def test_saved_space_reads_back_the_same(tmp_path):
    space = spaces.load(write(tmp_path, GOOD), overrides={"samples": 5})
    again = spaces.load(write(tmp_path, spaces.to_yaml(space), "saved.yaml"))
    assert again["search"] == space["search"] and again["params"] == space["params"]


@pytest.mark.parametrize("path", sorted(spaces.SPACES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_are_valid_and_commented(path):
    space = spaces.load(path)
    raw = yaml.safe_load(path.read_text())
    lines = path.read_text().splitlines()
    for key in raw["params"]:
        line = next(line for line in lines if line.strip().startswith(f"{key}:"))
        assert "#" in line, f"{path.name}: params.{key} has no comment"
    assert sample(space, 3)


def test_shipped_spaces_cover_the_issue():
    names = {p.name for p in spaces.SPACES_DIR.glob("*.yaml")}
    assert {"cnn_scratch.yaml", "resnet_frozen.yaml", "resnet_unfreeze.yaml", "notebook.yaml"} <= names
    unfreeze = spaces.load(spaces.SPACES_DIR / "resnet_unfreeze.yaml")
    configs = sample(unfreeze, 30)
    assert any(c["model"] == "cnn" for c in configs) and any(c["model"] != "cnn" for c in configs)
    assert all(("unfreeze" in c) == (c["model"] != "cnn") for c in configs)


def test_notebook_space_runs_the_two_notebook_configs():
    space = spaces.load(spaces.SPACES_DIR / "notebook.yaml")
    study = optuna.create_study(direction="maximize")
    for point in space["first_trials"]:
        study.enqueue_trial(point)
    configs = []
    for _ in range(space["search"]["samples"]):
        trial = study.ask()
        fixed = space_values.optuna_space(space)(trial)
        configs.append({**trial.params, **fixed})
    cnn, resnet = sorted(configs, key=lambda c: c["model"])
    common = {"lr": 1e-4, "batch_size": 32, "head_width": 512, "dropout": 0.5}
    assert cnn == {**cnn, **common, "model": "cnn", "normalize": "half"} and "unfreeze" not in cnn
    assert resnet == {**resnet, **common, "model": "resnet18", "unfreeze": 0, "head_on": "logits"}
    assert space["search"]["epochs"] == 10


# one schema: the space checks every value with dogs.config, and refuses what would silently go wrong

SPACE_CASES = [
    # id, text, what the message says
    ("reduction_factor=inf", "search: {reduction_factor: .inf}\nparams: {lr: 1e-3}\n",
     ["search.reduction_factor", "not a finite number", "> 1"]),
    ("uniform=[-inf, inf]", "params: {lr: {uniform: [-.inf, .inf]}}\n", ["params.lr.uniform", "finite bounds"]),
    ("uniform=[0, nan]", "params: {dropout: {uniform: [0, .nan]}}\n", ["params.dropout.uniform", "finite bounds"]),
    ("samples=1000000000", "search: {samples: 1000000000}\nparams: {lr: 1e-3}\n",
     ["search.samples", "1000000000", "1..10000", "driver holds them all in memory"]),
    ("lr=-1 fixed", "params: {lr: -1}\n", ["params.lr", "-1 is not allowed", "> 0"]),
    ("lr low bound -1", "params: {lr: {uniform: [-1, 0.1]}}\n", ["params.lr", "-1 is not allowed", "> 0"]),
    ("dropout high bound 1.5", "params: {dropout: {uniform: [0.1, 1.5]}}\n", ["params.dropout", "1.5", "[0, 1)"]),
    ("image_size choice 0", "params: {image_size: {choice: [16, 0]}}\n", ["params.image_size", "0 is not allowed", "8..2048"]),
    ("precision choice fp16", "params: {precision: {choice: [fp32, fp16]}}\n", ["params.precision", "'fp16'", "bf16"]),
    ("normalize weird", "params: {normalize: weird}\n", ["params.normalize", "'weird'", "imagenet"]),
    ("seed abc", "params: {seed: abc}\n", ["params.seed", "'abc'", "an integer"]),
    ("head_width -3", "params: {head_width: {int: [-3, 8]}}\n", ["params.head_width", "-3", ">= 0"]),
    ("batch_size uniform", "params: {batch_size: {uniform: [8, 64]}}\n", ["params.batch_size.uniform", "integer", "randint"]),
    ("metric best_val_acc", "search: {metric: best_val_acc}\nparams: {lr: 1e-3}\n", ["search.metric", "val_loss"]),
    ("metric val_loss mode max", "search: {metric: val_loss, mode: max}\nparams: {lr: 1e-3}\n",
     ["search.mode", "worst epoch", "'min'"]),
    ("metric in params", "params: {metric: val_loss}\n", ["params.metric", "search.metric"]),
    ("mode in params", "params: {mode: {choice: [max, min]}}\n", ["params.mode", "search.mode"]),
    ("data in params", "params: {data: /somewhere, lr: 1e-3}\n", ["params.data", "--data"]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in SPACE_CASES], ids=[c[0] for c in SPACE_CASES])
def test_space_value_refused_by_the_config_schema(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    for part in expected:
        assert part.lower() in message.lower(), message


def test_empty_space_is_refused_saying_what_it_would_do(tmp_path):
    for text in ("", "search: {samples: 7}\n", "search: {samples: 7}\nparams: {}\n"):
        message = error_of(tmp_path, text)
        assert "params: empty" in message and "identical trials of the defaults" in message
        assert "pretrained resnet18" in message and "loguniform" in message   # what it would do, how to fix
    assert "7 identical trials" in message


def test_data_comes_only_from_the_data_flag(tmp_path):
    path = write(tmp_path, "params: {lr: {loguniform: [1e-4, 1e-2]}}\n")
    with pytest.raises(spaces.SpaceError, match="--set data: .*--data DIR"):
        spaces.load(path, sets={"data": "/elsewhere"}, data=None)
    top = write(tmp_path, "data: /elsewhere\nparams: {lr: 1e-3}\n", "top.yaml")
    with pytest.raises(spaces.SpaceError, match=f"{top}: data: not allowed in a space file; .*--data DIR"):
        spaces.load(top, data="/mine")
    # the search's --data is every trial's data, and its saved copy of the space records it
    space = spaces.load(path, data="/mine")
    assert sample(space, 2)[0]["data"] == "/mine" and "data" not in spaces.searched_names(space)
    saved = spaces.load(write(tmp_path, spaces.to_yaml(space), "saved.yaml"))
    assert saved["params"] == space["params"] and "data: /mine" in spaces.to_yaml(space)


def test_space_metrics_are_the_config_metrics():
    from dogs import config

    assert settings.SETTINGS["metric"] is config.SCHEMA["metric"]


def test_time_budget_durations(tmp_path):
    assert [settings.parse_duration(t) for t in ("90s", "30m", "2h", "1h30m", "1.5h")] == [90, 1800, 7200, 5400, 5400]
    space = spaces.load(write(tmp_path, "search: {time_budget: 600}\nparams: {lr: 1e-3, model: {choice: [cnn]}}\n"))
    assert space["search"]["time_budget"] == "600s"   # a plain number is seconds


def test_time_fidelity_places_asha_rungs_in_seconds_from_the_budget(tmp_path):
    from tune.settings import asha_rungs

    text = "search: {fidelity: time, time_budget: 10m, samples: 20, epochs: 10, grace_period: 2}\nparams: {lr: 1e-3}\n"
    space = spaces.load(write(tmp_path, text))
    # 600 s x 2 slots over 20 trials x 10 epochs = a nominal epoch of 6 s; grace 2 of them; max_t the budget
    assert asha_rungs(space["search"], slots=2) == ("time_total_s", 12.0, 600)
    assert asha_rungs(space["search"], slots=1000)[1] == 600   # never past max_t (Ray asserts it)
    space = spaces.load(write(tmp_path, "search: {fidelity: epochs, epochs: 10, grace_period: 2}\nparams: {lr: 1e-3}\n"))
    assert asha_rungs(space["search"], slots=2) == ("training_iteration", 2, 10)
    assert spaces.load(write(tmp_path, GOOD), overrides={"fidelity": "time", "time_budget": "5m"})["search"]["fidelity"] == "time"


# combinations: values each allowed but that cannot run together are refused before Ray starts

def test_fixed_and_set_values_that_cannot_run_together_are_refused(tmp_path):
    path = write(tmp_path, "params: {model: resnet18, lr: {loguniform: [1e-4, 1e-2]}}\n", "resnet.yaml")
    with pytest.raises(spaces.SpaceError) as info:
        spaces.load(path, sets={"unfreeze": 5})
    message = str(info.value)
    assert message.startswith(f"{path}: params: the fixed values model='resnet18' (fixed), unfreeze=5 (--set) "
                              "cannot run together: unfreeze: 5 is out of range for model 'resnet18'"), message
    assert "allowed: an integer in 0..4 for resnet18" in message and "\n" not in message
    message = error_of(tmp_path, "search: {epochs: 3}\nparams: {warmup_epochs: 3, lr: {loguniform: [1e-4, 1e-2]}}\n")
    assert "the fixed values search.epochs=3, warmup_epochs=3 (fixed)" in message and "0..2" in message
    assert spaces.load(path, sets={"unfreeze": 4})   # resnet18 has 4 stages


def test_a_first_trial_that_cannot_run_is_refused_naming_its_index(tmp_path):
    message = error_of(tmp_path, "params:\n  model: {choice: [cnn, resnet18]}\n  unfreeze: {int: [0, 4]}\n"
                                 "first_trials: [{model: resnet18, unfreeze: 4}, {model: cnn, unfreeze: 4}]\n")
    assert (": first_trials[1] {'model': 'cnn', 'unfreeze': 4}: a trial with model='cnn' (first_trials[1]), "
            "unfreeze=4 (first_trials[1]) cannot run") in message, message
    assert "0..0 for cnn" in message and "change the entry" in message


@pytest.mark.parametrize("text, drawn", [
    # unfreeze 0..4 suits the ResNet, not the CNN (0 stages): a `when:` would keep it honest
    ("params: {model: {choice: [resnet18, cnn]}, unfreeze: {int: [0, 4]}}\n",
     "model='cnn' (sampled), unfreeze=4 (sampled)"),
    # onecycle needs a warm-up; the range's low end 0 is drawn with it
    ("params:\n  schedule: {choice: [constant, onecycle]}\n  warmup_epochs: {int: [0, 2], when: {schedule: onecycle}}\n",
     "schedule='onecycle' (sampled), warmup_epochs=0 (sampled)"),
    # warm-up as long as the search's epochs
    ("search: {epochs: 4}\nparams: {schedule: cosine, warmup_epochs: {randint: [0, 5]}}\n",
     "search.epochs=4, warmup_epochs=4 (sampled)"),
    # cutmix on cached frozen features (augment off, a frozen prefix)
    ("params: {model: resnet18, augment: {choice: [true, false]}, cutmix: {choice: [0.0, 1.0]}}\n",
     "augment=False (sampled), cutmix=1.0 (sampled)"),
    # inside a range: cutmix exists only at unfreeze 2, where resnet18 still has a frozen, cached prefix
    ("params:\n  model: resnet18\n  unfreeze: {int: [0, 4]}\n  cutmix: {value: 1.0, when: {unfreeze: 2}}\n",
     "unfreeze=2 (sampled), cutmix=1.0 (fixed)"),
])
def test_combinations_sampling_can_reach_are_refused(tmp_path, text, drawn):
    message = error_of(tmp_path, text)
    assert f"params: a trial can draw {drawn}, which cannot run together: " in message, message
    assert "narrow the range(s), or add a `when:` condition" in message and "\n" not in message


@pytest.mark.parametrize("text", [
    "params:\n  model: {choice: [cnn, resnet18, efficientnet_b0]}\n  unfreeze: {int: [0, 4], when: {model: [resnet18, "
    "efficientnet_b0]}}\n  augment: {choice: [false, true]}\n  cutmix: {choice: [0.0, 1.0], when: {augment: true}}\n",
    "search: {epochs: 3}\nparams:\n  schedule: {choice: [constant, cosine, onecycle]}\n  warmup_epochs: {int: [1, 2], "
    "when: {schedule: [cosine, onecycle]}}\n",
    "params: {model: resnet18, unfreeze: {int: [0, 4]}, cutmix: {value: 1.0, when: {unfreeze: 4}}}\n",
])
def test_spaces_whose_every_combination_runs_are_not_refused(tmp_path, text):
    space = spaces.load(write(tmp_path, text))
    s = space["search"]
    for config in sample(space, 30):   # and every trial it proposes resolves
        resolve({**config, "epochs": s["epochs"], "metric": s["metric"], "mode": s["mode"]})


@pytest.mark.parametrize("name", ["modern_finetune.yaml", "resnet_unfreeze.yaml", "notebook.yaml"])
def test_shipped_spaces_pass_the_combination_check_with_smoke_test_sizes(name):
    from tune.spaces import SMOKE_CONFIG, SMOKE_SETTINGS

    assert spaces.load(spaces.SPACES_DIR / name, overrides=SMOKE_SETTINGS, sets=SMOKE_CONFIG)


@given(resource=st.booleans(), free=st.booleans(), note=st.none() | st.text("abc xyz;", min_size=1, max_size=20),
       choices=st.none() | st.lists(st.sampled_from(["one", "two", "three"]), min_size=1, max_size=3, unique=True))
def test_a_setting_s_flag_is_made_from_its_entry_alone(resource, free, note, choices):
    """Adding a setting is one SETTINGS entry: its flag's --help group, argparse choices and help come from it."""
    from unittest import mock

    from dogs.config import Key
    from tune import spaces

    entry = Key(None, str | None, tuple(choices) if choices else None, "a new setting", flag_note=note,
                flag_choices=not free, resource=resource)
    with mock.patch.dict(settings.SETTINGS, {"new_setting": entry}):
        parser = spaces.get_args_parser()
    action = next(a for a in parser._actions if "--new-setting" in a.option_strings)
    group = next(g.title for g in parser._action_groups if action in g._group_actions)
    assert group == ("resources" if resource else "search")
    assert action.choices == (tuple(choices) if choices and not free else None)
    assert action.help == "a new setting (search.new_setting)" + (f"; {note}" if note else "")


def test_smoke_test_gives_each_entry_s_smoke_value_and_flags_still_win():
    """--smoke-test: the `smoke` field of each setting and config key; an explicit flag or --set overrides it."""
    from dogs.config import SCHEMA
    from tune import spaces

    smoke_settings = {k: s.smoke for k, s in settings.SETTINGS.items() if s.smoke is not None}
    smoke_config = {k: s.smoke for k, s in SCHEMA.items() if s.smoke is not None}
    assert {"samples", "epochs"} <= set(smoke_settings) and {"image_size", "weights"} <= set(smoke_config)
    space = spaces.space_from_args(spaces.get_args_parser().parse_args(["--space", "cnn_scratch.yaml", "--smoke-test"]), None)
    assert {k: space["search"][k] for k in smoke_settings} == smoke_settings
    fixed = {p["name"]: p["args"] for p in space["params"] if p["kind"] == "fixed"}
    assert {k: fixed[k] for k in smoke_config} == smoke_config
    argv = ["--space", "cnn_scratch.yaml", "--smoke-test", "--epochs", "3", "--set", "image_size=40"]
    space = spaces.space_from_args(spaces.get_args_parser().parse_args(argv), None)
    assert space["search"]["epochs"] == 3 and space["search"]["samples"] == smoke_settings["samples"]
    assert {p["name"]: p["args"] for p in space["params"] if p["kind"] == "fixed"}["image_size"] == 40


@pytest.mark.parametrize("flag, value", [("--epochs", "5"), ("--grace-period", "2"), ("--sampler", "random"),
                                         ("--cpus-per-trial", "2")])
def test_resume_names_a_changed_setting_with_its_entry_s_reason(tmp_path, flag, value):
    """--resume with another value of a setting: one "search.<key> (saved: x, now: y[; why])" item, the why being
    the setting's `why_fixed` where it has one."""
    from tune import spaces, resume

    key = flag[2:].replace("-", "_")
    path = write(tmp_path, GOOD)
    args = spaces.get_args_parser().parse_args(["--resume", "--space", str(path), flag, value])
    differ = resume.resume_differences(args, tmp_path, spaces.load(path, data=None))   # as tune.search saves it
    saved, now = spaces.load(path)["search"][key], spaces.settings_from_args(args)[key]
    why = settings.SETTINGS[key].why_fixed
    assert differ == [f"search.{key} (saved: {saved!r}, now: {now!r}" + (f"; {why}" if why else "") + ")"]


def test_beyond_the_cap_a_seeded_sample_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(space_values, "COMBINATIONS_CHECKED", 40)
    cutmix = ", ".join(str(i / 10) for i in range(50))
    space = spaces.load(write(tmp_path, f"params: {{model: resnet18, augment: true, cutmix: {{choice: [{cutmix}]}}, "
                                        "unfreeze: {int: [0, 4]}}\n"))
    drawn = space_values._combinations(space["params"])
    assert len(drawn) == 40 and drawn == space_values._combinations(space["params"])   # 100 to try: a seeded 40
    message = error_of(tmp_path, f"params: {{model: {{choice: [resnet18, cnn]}}, cutmix: {{choice: [{cutmix}]}}, "
                                 "unfreeze: {int: [0, 4]}}\n")
    assert "unfreeze=4 (sampled)" in message and "model='cnn' (sampled)" in message


def test_combination_keys_are_every_key_the_rules_read():
    import itertools

    from dogs.config import COMBINATION_KEYS, DEFAULTS, MODELS, combination_problem

    class Reads(dict):
        def __getitem__(self, key):
            read.add(key)
            return super().__getitem__(key)

    read, named = set(), set()
    for model, unfreeze, schedule, warmup, cutmix, cache, augment in itertools.product(
            MODELS, (0, 2, 5), ("constant", "onecycle"), (0, 1, 3), (0.0, 1.0), (True, False), (True, False)):
        found = combination_problem(Reads({**DEFAULTS, "model": model, "unfreeze": unfreeze, "schedule": schedule,
                                           "warmup_epochs": warmup, "epochs": 3, "cutmix": cutmix,
                                           "feature_cache": cache, "augment": augment}))
        if found:   # the keys a rule returns are keys its message names, and keys the rules read
            why, keys = found
            assert keys and all(key in why for key in keys), found
            named |= set(keys)
    assert read == set(COMBINATION_KEYS) and named <= read


def test_transfer_space_spends_a_cpu_on_one_feature_pass_and_a_gpu_on_unfreezing_too():
    """transfer.yaml (issue 24): its first trials are frozen at 224 px (one feature pass serves them all, a 2-core
    CPU's 10 minutes), TPE may then unfreeze with backbone_lr and augment only when stages train; the README's
    CPU flags keep every trial on that cache."""
    path = spaces.SPACES_DIR / "transfer.yaml"
    space = spaces.load(path)
    assert len(space["first_trials"]) >= 4
    assert all(t["unfreeze"] == 0 and t["image_size"] == 224 for t in space["first_trials"])
    configs = sample(space, 40)
    assert {c["model"] for c in configs} == {"mobilenet_v2"} and {c["weights"] for c in configs} == {"IMAGENET1K_V1"}
    assert any(c["unfreeze"] > 0 for c in configs)
    assert all(("backbone_lr" in c) == ("augment" in c) == (c["unfreeze"] > 0) for c in configs)
    pinned = spaces.load(path, sets={"unfreeze": 0, "image_size": 224})
    assert all(c["unfreeze"] == 0 and c["image_size"] == 224 and "augment" not in c for c in sample(pinned, 20))
