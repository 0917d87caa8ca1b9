"""Where a run computes: the default device and the autocast dtype of config precision."""
import torch


def default_device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def amp_dtype(config, device):
    """The autocast dtype of config precision (auto | bf16 | fp32, as dogs.config allows); None = fp32."""
    precision = config["precision"]
    if precision == "auto":  # bf16 where the device has it
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": torch.bfloat16, "fp32": None}[precision]
