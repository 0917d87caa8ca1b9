"""search_spaces/modern_finetune.yaml: every config it can propose is one dogs.config accepts."""
from dogs.config import resolve
from tune import spaces
from test_spaces import sample


def trial_configs(space, n):
    s = space["search"]
    return [resolve({**c, "epochs": s["epochs"], "metric": s["metric"], "mode": s["mode"]}) for c in sample(space, n)]


def test_modern_finetune_space_proposes_only_valid_configs_with_honest_conditions():
    path = spaces.SPACES_DIR / "modern_finetune.yaml"
    configs = trial_configs(spaces.load(path), 60)  # resolve() raises on any combination it cannot honour
    smoke = trial_configs(spaces.load(path, overrides={"epochs": 2, "grace_period": 1}, sets={"image_size": 32, "weights": "none"}), 20)
    assert len({c["model"] for c in configs}) >= 5 and {c["schedule"] for c in configs} == {"constant", "cosine",
                                                                                              "onecycle"}
    for c in configs + smoke:
        assert (c["warmup_epochs"] > 0) == (c["schedule"] != "constant"), c
        assert not c["cutmix"] or c["augment"], c
    raw = [c for c in sample(spaces.load(path), 60)]
    assert all(("backbone_lr" in c) == (c["unfreeze"] > 0) for c in raw)
    assert all(("cutmix" in c) == c["augment"] for c in raw)
