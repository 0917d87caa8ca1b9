"""Generated textured-object photos: a second, harder task for bench/search_quality.py that is not digits.

    python bench/objects.py OUT [--classes 6 --train 200 --val 40 --test 200 --size 48 --seed 0]

Each class is a mix of cues, none decisive alone: a preferred shape (drawn 55% of the time, any shape
otherwise), a hue (class hues are 1/classes of the circle apart, each drawn with a spread of 0.09, so
neighbouring classes overlap) and a stripe texture (class-dependent frequency with jitter, any orientation).
Each photo: a smooth random background with 0-3 clutter shapes, the object at a random place, scale and
rotation (it may leave the frame), lighting and contrast jitter, blur, sensor noise and JPEG compression
(quality 35-90). Seeded: the same arguments write the same bytes.

Writes OUT/task/{Train,Validation}/<class>/ (what a search sees) and OUT/holdout/{Train,Validation}/ whose
Validation/ is the held-out test photos (no search sees them; tune.best and the bench score on them).
"""
import argparse
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("ellipse", "rectangle", "triangle", "star", "ring", "cross", "diamond", "hexagon")


# ----------------------------------------------------------------------------- one photo
def polygon(shape, s):
    """The outline of `shape` in a unit box around 0, as (x, y) points scaled by s."""
    a = np.linspace(0, 2 * np.pi, {"triangle": 3, "diamond": 4, "hexagon": 6, "star": 10}[shape], endpoint=False)
    r = np.where(np.arange(len(a)) % 2, 0.45, 1.0) if shape == "star" else np.ones(len(a))
    if shape == "diamond":
        r = r * np.array([1.0, 0.6, 1.0, 0.6])
    return np.stack([np.cos(a) * r, np.sin(a) * r], 1) * s / 2


def shape_mask(shape, size, center, scale, angle):
    """A float mask (size x size) of `shape`, drawn at 4x and shrunk (anti-aliased edges)."""
    big = size * 4
    img = Image.new("L", (big, big))
    d = ImageDraw.Draw(img)
    cx, cy, s = center[0] * 4, center[1] * 4, scale * 4
    if shape in ("ellipse", "ring"):
        d.ellipse([cx - s / 2, cy - s / 3, cx + s / 2, cy + s / 3], fill=255)
        if shape == "ring":
            d.ellipse([cx - s / 4, cy - s / 6, cx + s / 4, cy + s / 6], fill=0)
    elif shape == "rectangle":
        d.rectangle([cx - s / 2, cy - s / 3, cx + s / 2, cy + s / 3], fill=255)
    elif shape == "cross":
        d.rectangle([cx - s / 2, cy - s / 8, cx + s / 2, cy + s / 8], fill=255)
        d.rectangle([cx - s / 8, cy - s / 2, cx + s / 8, cy + s / 2], fill=255)
    else:
        d.polygon([(cx + x, cy + y) for x, y in polygon(shape, s)], fill=255)
    img = img.rotate(angle, resample=Image.BILINEAR, center=(cx, cy))
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) / 255


def rgb(hue, sat, val):
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32) * 255


def photo(label, classes, size, rng):
    """One photo of class `label` as a PIL image (before JPEG)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # background: a smooth random colour field, then 0-3 clutter shapes of any kind and colour
    low = rng.integers(30, 226, size=(3, 3, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.float32)
    for _ in range(rng.integers(0, 4)):
        m = shape_mask(SHAPES[rng.integers(len(SHAPES))], size, rng.uniform(0, size, 2),
                       size * rng.uniform(0.15, 0.35), rng.uniform(0, 360))
        img = img * (1 - m[..., None]) + rgb(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.3, 1))[None, None] * m[..., None]
    # the object: the class's shape (or any), hue and stripe frequency, each with its own spread
    shape = SHAPES[label % len(SHAPES)] if rng.random() < 0.55 else SHAPES[rng.integers(len(SHAPES))]
    color = rgb(label / classes + rng.normal(0, 0.09), rng.uniform(0.35, 1.0), rng.uniform(0.45, 1.0))
    freq = (0.15 + 0.5 * (label % 3) / 2) * rng.uniform(0.75, 1.3) * 2 * np.pi / 4
    theta = rng.uniform(0, np.pi)
    stripes = 1 + rng.uniform(0.2, 0.5) * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3))
    m = shape_mask(shape, size, rng.uniform(0.25, 0.75, 2) * size, size * rng.uniform(0.35, 0.8), rng.uniform(0, 360))
    img = img * (1 - m[..., None]) + (color[None, None] * stripes[..., None]) * m[..., None]
    # lighting: a gradient, contrast and brightness jitter; then blur and sensor noise
    gx, gy = rng.normal(0, 0.4, 2)
    img = img * (1 + (gx * (xx / size - 0.5) + gy * (yy / size - 0.5)))[..., None]
    img = (img - 128) * rng.uniform(0.6, 1.2) + 128 + rng.normal(0, 20)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.9)))
    noisy = np.asarray(out, dtype=np.float32) + rng.normal(0, rng.uniform(3, 14), (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- the data set
def make_objects(root, classes=6, train=200, val=40, test=200, size=48, seed=0):
    """Write the task and holdout ImageFolders under root (see the module doc); returns (task, holdout).
    Photo i of a split and class has its own generator (seed, split, class, i): adding photos changes none."""
    root = Path(root)
    counts = {"train": train, "val": val, "test": test}
    # Train/ goes to both folders: tune.best and the bench read the class list of holdout/ from it
    folders = {"train": [("task", "Train"), ("holdout", "Train")], "val": [("task", "Validation")],
               "test": [("holdout", "Validation")]}
    for n, split in enumerate(("train", "val", "test")):
        for label in range(classes):
            for i in range(counts[split]):
                paths = [root / top / sub / f"class{label}" / f"{i}.jpg" for top, sub in folders[split]]
                if all(path.exists() for path in paths):
                    continue
                rng = np.random.default_rng([seed, n, label, i])
                img, quality = photo(label, classes, size, rng), int(rng.integers(35, 91))
                for path in paths:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    img.save(path, quality=quality)
    return root / "task", root / "holdout"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--train", type=int, default=200, help="training photos per class")
    p.add_argument("--val", type=int, default=40, help="validation photos per class")
    p.add_argument("--test", type=int, default=200, help="held-out test photos per class")
    p.add_argument("--size", type=int, default=48, help="photo width and height in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    task, holdout = make_objects(args.out, args.classes, args.train, args.val, args.test, args.size, args.seed)
    print(f"{task}\n{holdout}")


if __name__ == "__main__":
    main()
