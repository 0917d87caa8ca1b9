"""Mini-batches straight from an in-memory array: no JPEG decoding, no DataLoader workers on the hot path.

The array (uint8 images or cached features) is moved to the GPU once when it fits, else each batch is
gathered on the host and copied through pinned memory. Normalization and augmentation run on the device.
"""
import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

_ON_DEVICE = OrderedDict()  # (array key, device) -> tensor: trials that reuse a worker process skip the upload
KEEP_ON_DEVICE = 4  # arrays kept per process (train + validation of the last two data sets / feature caches)
GPU_SHARE = 0.4  # keep an array on the GPU only while it takes less than this share of the free memory


def to_device_once(key, array, device):
    """`array` as a tensor on `device` when it fits, else None (then batches are streamed)."""
    if device.type != "cuda":
        return None
    slot = (key, str(device))
    if slot not in _ON_DEVICE:
        free, _ = torch.cuda.mem_get_info(device)
        if array.nbytes > GPU_SHARE * free:
            return None
        while len(_ON_DEVICE) >= KEEP_ON_DEVICE:
            _ON_DEVICE.popitem(last=False)  # least recently used first
        _ON_DEVICE[slot] = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    _ON_DEVICE.move_to_end(slot)
    return _ON_DEVICE[slot]


class Batches:
    """Iterates (inputs, labels) over rows `index` of `array`, shuffled per epoch when `shuffle`.

    A shuffled (training) epoch whose last batch would hold one image drops it, as timm's training loader drops
    its last batch: a trainable BatchNorm cannot normalize one value per channel (a 1x1 feature map) and raises.
    Another image is left out each epoch; evaluation (not shuffled) sees every image.
    """

    def __init__(self, array, labels, index, batch_size, device, prepare, shuffle=False, seed=None, key=None):
        self.array, self.index, self.batch_size = array, np.asarray(index), batch_size
        self.device, self.prepare, self.shuffle, self.seed = device, prepare, shuffle, seed
        single_last = shuffle and batch_size > 1 and len(self.index) % batch_size == 1
        self.used = len(self.index) - 1 if single_last else len(self.index)   # rows an epoch yields
        self.labels = torch.as_tensor(np.asarray(labels)[self.index], dtype=torch.long).to(device)
        self.on_device = to_device_once(key, array, device) if key else None
        self.epoch = 0

    def __len__(self):
        return math.ceil(self.used / self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = epoch  # the shuffle order depends on (seed, epoch) only, so a resumed run sees the same

    def __iter__(self):
        n = len(self.index)
        if self.shuffle:
            g = torch.Generator()
            if self.seed is None:
                g.seed()
            else:
                g.manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g).numpy()
        else:
            order = np.arange(n)
        if n == 0:
            return
        order = order[:self.used]   # a last training batch of one dropped (see the class doc)
        n = len(order)
        # the epoch's order, sorted within each batch (sorted rows read a memmap faster), on the device once
        pos = np.concatenate([np.sort(order[s:s + self.batch_size]) for s in range(0, n, self.batch_size)])
        rows = self.index[pos]
        pos_on_device = torch.as_tensor(pos, device=self.device)
        rows_on_device = torch.as_tensor(rows, device=self.device) if self.on_device is not None else None
        for start in range(0, n, self.batch_size):
            end = start + self.batch_size
            if rows_on_device is not None:
                x = self.on_device[rows_on_device[start:end]]
            else:
                x = torch.from_numpy(self.array[rows[start:end]])
                if self.device.type == "cuda":
                    x = x.pin_memory().to(self.device, non_blocking=True)
            yield self.prepare(x), self.labels[pos_on_device[start:end]]


def image_preparer(mean, std, device, augment=False, channels_last=True):
    """uint8 (B, H, W, 3) -> normalized float (B, 3, H, W) on the device, optionally augmented."""
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def prepare(x):
        x = x.permute(0, 3, 1, 2).float()  # NHWC storage viewed as NCHW: already channels_last in memory
        x.sub_(mean).div_(std)
        if augment:
            x = random_resized_crop_flip(x)
        return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    return prepare


def random_resized_crop_flip(x, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """Per-image random resized crop and horizontal flip, as one batched affine resample on the device."""
    b, dev = x.shape[0], x.device
    area = torch.empty(b, device=dev).uniform_(*scale)
    aspect = torch.exp(torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 1, 1] = w * flip, h
    theta[:, 0, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)
    theta[:, 1, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def feature_preparer(device, channels_last=True):
    """Cached frozen-prefix outputs (float16/32) -> float32 on the device (feature maps channels_last)."""

    def prepare(x):
        x = x.to(device, non_blocking=True).float()
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 and channels_last else x

    return prepare
