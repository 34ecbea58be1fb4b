"""
What differs between devices, decided in one place: the default device and dtype, autocast, and
a GPU's peak FLOP/s for MFU.
"""
from contextlib import nullcontext

import torch

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# bf16 dense peak FLOP/s by device name, first match wins
PEAK_FLOPS = [('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('GH200', 989e12),
              ('A100', 312e12), ('L40S', 362e12), ('A10G', 70e12), ('B200', 2250e12)]


def default_device():
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def default_dtype():
    """bf16 autocast where CUDA supports it, float32 elsewhere."""
    return 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'


def autocast(device, dtype):
    """The context the forward pass runs in: none for float32, else mixed precision in `dtype`."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


def peak_flops(device):
    """The bf16 dense peak of a CUDA device, from its name; None elsewhere or for a card not in PEAK_FLOPS."""
    device = torch.device(device)
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)
