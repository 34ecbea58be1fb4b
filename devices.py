"""
What differs between devices (cpu, cuda, mps), decided in one place: which devices this machine
has, the default dtype, autocast, fused optimizer kernels, pinned memory, the device's RNG state,
and a GPU's peak FLOP/s for MFU.
"""
import sys
from contextlib import nullcontext
from itertools import accumulate

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from configurator import ConfigError

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# the vendors' dense bf16 tensor-core peaks (fp16 for V100 and T4, which have no bf16), by device name;
# the first key found in torch.cuda.get_device_name() wins, so a more specific name comes first
PEAK_FLOPS = [
    ('GH200', 989e12), ('H200 NVL', 835e12), ('H200', 989e12),
    ('H100 NVL', 835e12), ('H100 PCIe', 756e12), ('H100', 989e12), ('H800 PCIe', 756e12), ('H800', 989e12),
    ('GB200', 2500e12), ('B200', 2250e12),
    ('A100', 312e12), ('A10G', 70e12), ('A10', 125e12),
    ('L40S', 362e12), ('L40', 181e12), ('L4', 121e12),
    ('RTX 6000 Ada', 364e12), ('RTX 4090', 165e12),
    ('V100-PCIE', 112e12), ('V100', 125e12), ('Tesla T4', 65e12),  # not 'T4': the T400 is another card
]
_unknown_cards = set()


def default_device():
    if torch.cuda.is_available():
        return 'cuda'
    return 'mps' if torch.backends.mps.is_available() else 'cpu'


def check_device(device):
    """A device the scripts can run on, here; else ConfigError saying why."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ('cpu', 'cuda', 'mps'):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps")
    if kind == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked, but torch sees no CUDA device here; use --device=cpu")
    if kind == 'mps' and not torch.backends.mps.is_available():
        why = "no Apple GPU (MPS) is available here" if torch.backends.mps.is_built() else "this torch is built without MPS"
        raise ConfigError(f"device {device!r} asked, but {why}; use --device=cpu")


def default_dtype(device):
    """bf16 autocast on a CUDA GPU with bf16 tensor cores; float32 on the CPU, on MPS and on older GPUs."""
    # not bf16 that torch emulates (V100, T4): it runs, but slower than float32 there
    if torch.device(device).type == 'cuda' and torch.cuda.is_bf16_supported(including_emulation=False):
        return 'bfloat16'
    return 'float32'


def check_dtype(device, dtype):
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    if torch.device(device).type == 'mps' and dtype == 'bfloat16' and not torch.backends.mps.is_macos_or_newer(14, 0):
        raise ConfigError("bfloat16 autocast on MPS needs macOS 14 or newer; use --dtype=float16 or float32")


def autocast(device, dtype):
    """The context the forward pass runs in: none for float32, else mixed precision in `dtype`."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


def fused_kernels(device):
    """Fused optimizer kernels (one launch for all tensors): CUDA only."""
    return torch.device(device).type == 'cuda'


def pin_memory(device):
    """Pinned host memory lets host-to-device copies run asynchronously: CUDA only."""
    return torch.device(device).type == 'cuda'


def to_device(tree, device):
    """The CPU tensors in tree (dicts, lists, tuples) on `device`, in one copy that does not block: their bytes
    packed into one buffer, pinned where CUDA, copied with non_blocking and viewed back. (A blocking copy from
    pageable memory waits for all the work queued on the device.)"""
    leaves, spec = tree_flatten(tree)
    tensors = [t.contiguous() for t in leaves if torch.is_tensor(t)]
    sizes = [-(-t.numel() * t.element_size() // 8) * 8 for t in tensors]  # 8-byte aligned: each viewed back as its dtype
    starts = list(accumulate([0] + sizes))
    buf = torch.zeros(starts[-1], dtype=torch.uint8, pin_memory=pin_memory(device))
    for t, start in zip(tensors, starts):
        buf[start:start + t.numel() * t.element_size()] = t.reshape(-1).view(torch.uint8)
    buf = buf.to(device, non_blocking=True)
    moved = iter([buf[start:start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
                  for t, start in zip(tensors, starts)])
    return tree_unflatten([next(moved) if torch.is_tensor(t) else t for t in leaves], spec)


def set_current(device):
    """Make `device` the default of its kind, so that cuda:N's RNG state is the one saved and restored."""
    if torch.device(device).type == 'cuda':
        torch.cuda.set_device(device)


def rng_state(device):
    """The RNG state of the device's own generator (dropout on the device); None for the CPU."""
    kind = torch.device(device).type
    return torch.cuda.get_rng_state() if kind == 'cuda' else torch.mps.get_rng_state() if kind == 'mps' else None


def set_rng_state(device, state):
    kind = torch.device(device).type
    if kind == 'cuda':
        torch.cuda.set_rng_state(state)
    elif kind == 'mps':
        torch.mps.set_rng_state(state)


def synchronize(device):
    """Wait for the device's queued work (timing)."""
    kind = torch.device(device).type
    if kind == 'cuda':
        torch.cuda.synchronize(device)
    elif kind == 'mps':
        torch.mps.synchronize()


def peak_flops(device):
    """The bf16 dense peak of a CUDA device, from its name; None elsewhere. An unknown card is named once on
    stderr, with where to add it."""
    device = torch.device(device)
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((flops for key, flops in PEAK_FLOPS if key in name), None)
    if peak is None and name not in _unknown_cards:
        _unknown_cards.add(name)
        print(f"no peak FLOP/s known for {name!r}, so no MFU: add its dense bf16 peak to PEAK_FLOPS in devices.py",
              file=sys.stderr, flush=True)
    return peak
