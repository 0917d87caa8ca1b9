"""Export a checkpoint's whole network (a frozen prefix put back) as files anyone can load without this project.

    model.onnx          ONNX, dynamic batch (torch.onnx.export's dynamo exporter, onnxscript, from the program below)
    model.pt2           the torch.export program: torch.export.load("model.pt2").module()(image)
    model.safetensors   the weights of dogs.models.Net (frozen.*, tail.*), the config and classes in its metadata
    preprocess.py       load_rgb(path, size): the decode training used (dogs.decode, as it is): Pillow + numpy only
    model_card.json     classes, input, normalization, preprocessing, config, source, metrics, package versions
    MODEL_CARD.md       the same, for people

Both programs take `image`: uint8 (N, size, size, 3) RGB, as load_rgb returns it stacked, and give `logits` and
`probabilities` (N, classes). The normalization (mean/std) is inside them, so a caller cannot get it wrong.
Each file is checked before the folder gets its name: ONNX Runtime and the .pt2 must give the PyTorch model's
probabilities within 1e-4 on a test batch, or nothing is written.
"""
import inspect
import json
import os
import platform
import secrets
import shutil
import signal
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data, decode, models
from .errors import CheckpointError, ExportError, UserError
from .files import is_plain_file

FORMAT = "dogs-tune export"
CARD = "model_card.json"
TOLERANCE = 1e-4   # the largest difference in a probability between an exported file and the PyTorch model
PACKAGES = ("dogs-tune", "torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "safetensors", "pillow", "numpy")


class Exported(nn.Module):
    """uint8 (N, H, W, 3) RGB -> (logits, probabilities): the normalization training used, the network, a softmax."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, image):
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std   # as dogs.batches.image_preparer
        logits = self.net(x)
        return logits, logits.softmax(1)


def check_target(folder):
    """`folder` as an export's destination: new, empty, or an earlier export (replaced); else one ExportError line
    naming what is in the way. The packages the export needs must be installed."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime", "safetensors") if not find_spec(name)]
    if missing:
        raise ExportError(f"--export needs {', '.join(missing)}: pip install -e '.[export]' (or pip install "
                          f"{' '.join(missing)})")
    given, folder = folder, Path(os.path.abspath(folder))   # '.', 'model/..': the folder they name
    here, real = Path.cwd().resolve(), folder.resolve()   # through links too
    if real == here or real in here.parents:
        raise ExportError(f"--export {given}: that is the current folder{' or one above it' if real != here else ''},"
                          " which an export replaces whole: give a folder to create, e.g. --export model/")
    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        raise ExportError(f"--export {given}: not a folder (a file or a link): give a new or empty folder")
    if folder.is_dir():
        others = not_exported(folder)
        if others:
            raise ExportError(f"--export {given}: the folder holds {', '.join(others[:5])}"
                              f"{f' and {len(others) - 5} more' if len(others) > 5 else ''}, which no earlier export "
                              f"({CARD} of {FORMAT}, its files) wrote: give a new or empty folder, or move them away")
    return folder


FILES = ("model.onnx", "model.pt2", "model.safetensors", "preprocess.py", CARD, "MODEL_CARD.md")   # what we write


def not_exported(folder):
    """The entries of `folder` that an earlier export did not write (sorted names; [] for an export or an empty
    folder). An export's files are those its card lists (and the card) among FILES, each a plain file, and the
    __pycache__ that importing its preprocess.py leaves."""
    entries = sorted(p.name for p in Path(folder).iterdir())
    try:
        card = json.loads((Path(folder) / CARD).read_text())
        listed = set(card["files"]) | {CARD} if card.get("format") == FORMAT else set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed = set()
    ours = listed & set(FILES)
    return [name for name in entries if not (name in ours and is_plain_file(Path(folder, name))
                                             or name == "__pycache__" and is_preprocess_cache(Path(folder, name)))]


def is_export(folder):
    """Whether `folder`'s card says an export of ours wrote it (tune.serve --export reads such a folder)."""
    try:
        return json.loads((Path(folder) / CARD).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def is_preprocess_cache(path):
    return (path.is_dir() and not path.is_symlink()
            and all(p.name.startswith("preprocess.") and p.suffix == ".pyc" and is_plain_file(p) for p in path.iterdir()))


def export_model(model, ckpt, folder, source=None, data_root=None, log_fn=print):
    """Write the folder (see the module's docstring) for a loaded checkpoint; {name: path} of what was written.

    `source`: where the checkpoint came from (experiment, trial, ...) for the card; `data_root`: where Validation is,
    for per-class accuracy (default: the checkpoint's data; missing: the card says so)."""
    folder = check_target(folder)
    config, classes = ckpt["config"], list(ckpt["classes"])
    size = config["image_size"]
    mean, std = models.normalization(config)
    wrapper = Exported(model.cpu().eval(), mean, std).eval()
    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir(parents=True)
    try:
        # the program once: torch.export, then ONNX from it; each checked against the model before it is kept
        log_fn(f"Exporting {config['model']} ({len(classes)} classes, {size} px) -> {folder}")
        batch = torch.export.Dim("batch", min=1)
        with torch.no_grad():
            program = torch.export.export(wrapper, (example,), dynamic_shapes={"image": {0: batch}})
            torch.export.save(program, tmp / "model.pt2")
            onnx_program = torch.onnx.export(program, (example,), tmp / "model.onnx", input_names=["image"],
                                             output_names=["logits", "probabilities"], dynamo=True,
                                             external_data=False, verbose=False)
        save_weights(wrapper.net, ckpt, tmp / "model.safetensors")
        shutil.copymode(tmp / "model.onnx", tmp / "model.safetensors")   # safetensors writes it 0600: as the others
        check(wrapper, tmp, size)
        (tmp / "preprocess.py").write_text(preprocess_source())
        card = model_card(ckpt, source, validation(model, ckpt, data_root, log_fn),
                          {"exporter": "torch.onnx.export(dynamo=True) of the torch.export program",
                           "opset": onnx_opset(onnx_program)})
        (tmp / CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")
        (tmp / "MODEL_CARD.md").write_text(card_markdown(card))
        replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: folder / name for name in FILES}


def replace(tmp, folder):
    """Give `tmp` the name `folder`; an earlier export there is moved aside first, then its files deleted one by one
    (a file that appeared meanwhile is kept, and said). Ctrl-C and SIGTERM wait for the two renames."""
    old = None
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if folder.is_dir() and not_exported(folder):   # what appeared there while the model was exported
            raise ExportError(f"--export {folder}: {', '.join(not_exported(folder)[:5])} appeared in the folder during "
                              "the export: nothing written; move them away, or give another folder")
        if folder.is_dir():
            old = folder.with_name(f".{folder.name}.old{os.getpid()}-{secrets.token_hex(4)}")
            folder.rename(old)
        tmp.rename(folder)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if old is not None:
        for name in FILES:
            Path(old, name).unlink(missing_ok=True)
        if Path(old, "__pycache__").is_dir() and is_preprocess_cache(Path(old, "__pycache__")):
            shutil.rmtree(old / "__pycache__")
        try:
            old.rmdir()
        except OSError:
            raise ExportError(f"exported to {folder}; the earlier export's folder, moved to {old}, holds files that "
                              f"appeared during the export: {sorted(p.name for p in old.iterdir())[:5]}") from None


def save_weights(net, ckpt, path):
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, path, metadata={"format": FORMAT, "config": json.dumps(ckpt["config"]),
                                     "classes": json.dumps(list(ckpt["classes"]))})


def check(wrapper, folder, size, count=3):
    """ONNX Runtime and the .pt2 give the model's probabilities (within TOLERANCE) on `count` random images."""
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(folder / "model.onnx"))
    image = torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = wrapper(image)[1].numpy()
        from_pt2 = torch.export.load(folder / "model.pt2").module()(image)[1].numpy()
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = session.run(["probabilities"], {"image": image.numpy()})[0]
    for name, got in (("model.onnx in ONNX Runtime", from_onnx), ("model.pt2", from_pt2)):
        worst = float(np.abs(got - expected).max())
        if got.shape != expected.shape or not worst <= TOLERANCE:
            raise ExportError(f"{name} does not predict as the model does (largest probability difference {worst:.2e}, "
                              f"allowed {TOLERANCE}): not written")


def onnx_opset(onnx_program):
    model = getattr(onnx_program, "model_proto", None)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None) if model else None


def preprocess_source():
    """preprocess.py: the module dogs.decode as it is (it imports numpy and Pillow only), with a usage line."""
    return ('# The decode dogs-tune trained with, standalone (a copy of dogs/decode.py): Pillow + numpy.\n'
            '#     image = load_rgb("photo.jpg", size)   # uint8 (size, size, 3) RGB: one row of the model\'s input\n'
            + inspect.getsource(decode))


def validation(model, ckpt, data_root, log_fn):
    """{"val_acc", "images", "per_class": [{class, images, correct, accuracy}]} on the data's Validation/, or
    {"unavailable": why} when that folder is not on this machine."""
    from .device import default_device
    from .submission import ensemble_probs

    config = ckpt["config"]
    try:
        root, _ = data.resolve_root(data_root if data_root is not None else config["data"], config["cache_dir"])
        val_classes, files, labels = data.labeled_split(root, data.VALIDATION)
    except UserError as err:
        log_fn(f"  (no per-class accuracy in the card: {err.args[0].split(';')[0]}; --data DIR gives the folder)")
        return {"unavailable": str(err.args[0]).split(";")[0]}
    if list(val_classes) != list(ckpt["classes"]):
        raise CheckpointError(f"{root}/{data.VALIDATION}: its classes are not those of the checkpoint: give --data, "
                              f"the folder it was trained on")
    device = default_device()
    probs, ok = ensemble_probs([(model.to(device), config)], files, device)
    model.cpu()
    labels, predicted = np.asarray(labels)[ok], probs[ok].argmax(1)
    per_class = [{"class": name, "images": int((labels == i).sum()),
                  "correct": int(((labels == i) & (predicted == i)).sum())} for i, name in enumerate(ckpt["classes"])]
    for row in per_class:
        row["accuracy"] = row["correct"] / row["images"] if row["images"] else None
    return {"data": str(root), "images": int(ok.sum()), "val_acc": float((predicted == labels).mean()),
            "per_class": per_class}


def versions():
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


PREPROCESSING = (
    "Decode the file with Pillow; for a JPEG, let libjpeg decode at the smallest scale still >= size (draft). Turn it "
    "upright by its EXIF orientation. Scale 16-bit and float samples to 0..255 (I;16: x255/65535). Composite "
    "transparent images (RGBA, LA, PA, palette with transparency) on white. Convert to RGB and resize to size x size "
    "(aspect not kept) with BILINEAR, reducing_gap=3.0. Stack the uint8 (size, size, 3) arrays into (N, size, size, "
    "3): that is the input. The models subtract mean*255 and divide by std*255 per channel themselves.")


def model_card(ckpt, source, validated, onnx_info):
    config, size = ckpt["config"], ckpt["config"]["image_size"]
    mean, std = models.normalization(config)
    return {
        "format": FORMAT, "format_version": 1,
        "files": {"model.onnx": "ONNX, dynamic batch", "model.pt2": "torch.export program (torch.export.load)",
                  "model.safetensors": "weights of dogs.models.Net (needs this project's model code to load)",
                  "preprocess.py": "load_rgb(path, size): the decode used in training", "MODEL_CARD.md": "this card",
                  CARD: "this card, for programs (an export replaces a folder holding these files only)"},
        "classes": list(ckpt["classes"]),
        "input": {"name": "image", "dtype": "uint8", "shape": ["batch", size, size, 3], "layout": "NHWC",
                  "color": "RGB", "size": size},
        "outputs": {"logits": ["batch", len(ckpt["classes"])], "probabilities": ["batch", len(ckpt["classes"])]},
        "normalization": {"mean": list(mean), "std": list(std),
                          "applied": "inside the model: (image - mean * 255) / (std * 255) per channel"},
        "preprocessing": {"words": PREPROCESSING, "code": "preprocess.py", "decode": decode.DECODE},
        "onnx": onnx_info,
        "config": config,
        "source": {**(source or {}), "epoch": ckpt["epoch"], "metrics": ckpt["metrics"]},
        "validation": validated,
        "versions": versions(),
    }


def card_markdown(card):
    """MODEL_CARD.md: the card's facts for a reader, with the code that uses the ONNX file."""
    source, val, size = card["source"], card["validation"], card["input"]["size"]
    metrics = source.get("metrics", {})
    lines = [f"# {card['config']['model']} image classifier ({len(card['classes'])} classes)", "",
             f"Exported by dogs-tune {card['versions'].get('dogs-tune')} from "
             + (f"trial {source['trial']} of experiment `{source['experiment']}`, the best by {source['metric']} "
                f"({source['mode']}): {metrics.get(source['metric'])} at its best epoch, {source['epoch']}."
                if "trial" in source else f"checkpoint `{source.get('checkpoint')}`, epoch {source['epoch']}."), "",
             "## Files", "", *[f"- `{name}`: {what}" for name, what in card["files"].items()], "",
             "## Input and output", "",
             f"- input `image`: uint8, shape (N, {size}, {size}, 3), RGB, NHWC (any batch size N)",
             "- outputs `logits` and `probabilities` (softmax), shape (N, classes), classes in the order below",
             f"- normalization, inside the model: mean {card['normalization']['mean']}, std "
             f"{card['normalization']['std']} (on 0..1 values)", "",
             "## Preprocessing", "", card["preprocessing"]["words"], "",
             "In code (`preprocess.py`, Pillow + numpy only), with ONNX Runtime:", "", "```python",
             "import json, numpy as np, onnxruntime as ort", "from preprocess import load_rgb", "",
             'card = json.load(open("model_card.json"))',
             'image = load_rgb("photo.jpg", card["input"]["size"])[None]   # (1, size, size, 3) uint8',
             'probs = ort.InferenceSession("model.onnx").run(["probabilities"], {"image": image})[0][0]',
             'for i in probs.argsort()[::-1][:5]:', '    print(card["classes"][i], round(float(probs[i]), 3))',
             "```", "", "## Metrics (at the exported epoch, as training reported them)", "",
             "| metric | value |", "|---|---|",
             *[f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()], ""]
    if "per_class" in val:
        lines += [f"Recomputed with these weights on {val['images']} images of `{val['data']}`: "
                  f"val_acc {val['val_acc']:.4f}.", "", "| class | images | correct | accuracy |", "|---|---|---|---|",
                  *[f"| {r['class']} | {r['images']} | {r['correct']} | {_share(r['accuracy'])} |"
                    for r in val["per_class"]], ""]
    else:
        lines += [f"Per-class accuracy: not available ({val.get('unavailable')}).", ""]
    lines += ["## Classes (index: name)", "", *[f"- {i}: {name}" for i, name in enumerate(card["classes"])], "",
              "## Config", "", "```json", json.dumps(card["config"], indent=2), "```", "",
              "## Package versions", "", *[f"- {k} {v}" for k, v in card["versions"].items()], ""]
    return "\n".join(lines)


def _share(value):
    return "" if value is None else f"{value:.3f}"
