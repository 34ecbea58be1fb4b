"""
The on-disk format of a dataset directory (written by prepare_data.py), its readers, and the
data pipelines train.py draws its batches from.

On-disk format (train.py and sample.py read it only through the functions below):
- meta.json (JSON, never pickles); without it, a directory holding train.bin and val.bin is
  nanoGPT's format: GPT-2 BPE tokens (GPT2_BPE), as nanoGPT's prepare.py scripts write them:
    text:  {"kind": "text", "vocab_size": int, "tokenizer": "char" | "gpt2",
            "itos": [characters] (char only), "train_tokens": int, "val_tokens": int}
    image: {"kind": "image", "shape": [H, W, C], "num_classes": int, "class_names": [str],
            "mean": [per channel, 0..1], "std": [per channel, 0..1], "train_size": int, "val_size": int}
- text:  train.bin, val.bin: flat np.uint16 token ids (nanoGPT's format, read with np.memmap).
- image: train_x.npy, val_x.npy: (N, H, W, C) uint8, channels last even for C=1;
         train_y.npy, val_y.npy: (N,) int64. Plain np.save, loadable with allow_pickle=False.
- mean/std are over the train images, per channel, in 0..1 (pixel / 255).

The pipelines (TextData, ImageData) share one interface for train.py:
    data.get_batches(split, n_total, rows, gen) -> [(x, y)] on the device, one per micro-step
    data.eval_splits, data.eval_batches(split, rank, world_size) -> this process's eval batches
    data.unit ('tok' | 'img'), data.samples_per_micro_step
One generator, seeded alike on every process, draws each iteration's global batch of n_total
micro-batches; each process keeps its rows, so N processes see the data of one process
accumulating N times.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F


class DataError(Exception):
    """A problem with the data or its source; prepare_data.py's main() reports it in one line."""

# ----------------------------------------------------------------------------------------
# readers

GPT2_BPE = dict(kind='text', tokenizer='gpt2', vocab_size=50257)  # the meta of GPT-2 BPE tokens

def load_meta(data_dir, log=print):
    path = os.path.join(data_dir, 'meta.json')
    if not os.path.isfile(path) and all(os.path.isfile(os.path.join(data_dir, f'{s}.bin')) for s in ('train', 'val')):
        log(f"{data_dir} has train.bin and val.bin but no meta.json: read as nanoGPT's format (uint16 GPT-2 BPE tokens)")
        return dict(GPT2_BPE)
    if not os.path.isfile(path):
        from prepare_data import DATASETS  # here only: prepare_data imports this module
        name = os.path.basename(os.path.normpath(data_dir))
        cmd = name if name in DATASETS and name != 'npz' else 'npz --input FILE.npz'  # other names: an imported npz
        raise FileNotFoundError(f"no dataset in {data_dir} (meta.json missing); create it with: "
                                f"python prepare_data.py {cmd} --out_dir {data_dir}")
    with open(path, encoding='utf-8') as f:
        return json.load(f)

def load_images(data_dir, split):
    assert split in ('train', 'val'), split
    x = np.load(os.path.join(data_dir, f'{split}_x.npy'), allow_pickle=False)
    y = np.load(os.path.join(data_dir, f'{split}_y.npy'), allow_pickle=False)
    return x, y

def get_tokenizer(meta):
    if meta.get('tokenizer') == 'gpt2':
        import tiktoken
        enc = tiktoken.get_encoding('gpt2')
        encode = lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})  # in a prompt, the EOT token, as in nanoGPT
        return encode, lambda ids: enc.decode([int(i) for i in ids])
    if meta.get('tokenizer') == 'char':
        itos = meta['itos']
        stoi = {c: i for i, c in enumerate(itos)}
        def encode(s):
            try:
                return [stoi[c] for c in s]
            except KeyError:
                unknown = dict.fromkeys(c for c in s if c not in stoi)  # in order of appearance
                raise ValueError("characters not in the vocabulary: " + ', '.join(map(repr, unknown))) from None
        return encode, lambda ids: ''.join(itos[i] for i in ids)
    raise ValueError(f"no tokenizer in meta (kind={meta.get('kind')!r}, tokenizer={meta.get('tokenizer')!r})")

# ----------------------------------------------------------------------------------------
# pipelines

class TextData:
    """Random windows of block_size tokens from the memmapped token files."""
    unit = 'tok'
    eval_splits = ('train', 'val')

    def __init__(self, data_dir, device, batch_size, block_size, eval_iters, eval_seed):
        self.data_dir, self.device, self.batch_size, self.block_size = data_dir, device, batch_size, block_size
        self.eval_iters, self.eval_seed = eval_iters, eval_seed
        self.samples_per_micro_step = batch_size * block_size

    def get_batches(self, split, n_total, rows, gen):
        # a fresh memmap per call: a long-lived one keeps every page it touched (nanoGPT does the same)
        data = np.memmap(os.path.join(self.data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
        T = self.block_size
        ix = torch.randint(len(data) - T, (n_total, self.batch_size), generator=gen)[rows]
        batches = []
        for row in ix:
            x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in row])
            y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in row])
            if self.device.startswith('cuda'):  # pinned memory lets the copy run asynchronously
                x, y = x.pin_memory(), y.pin_memory()
            batches.append((x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)))
        return batches

    def eval_batches(self, split, rank, world_size):
        """eval_iters random batches, the same at every eval; this process's share of them."""
        gen = torch.Generator().manual_seed(self.eval_seed)
        return self.get_batches(split, self.eval_iters, slice(rank, None, world_size), gen)


class ImageData:
    """Both splits in device memory; training batches augmented there (crop with padding, flip)."""
    unit = 'img'
    eval_splits = ('val',)

    def __init__(self, data_dir, meta, device, batch_size, augment, crop_padding):
        self.device, self.batch_size, self.augment, self.crop_padding = device, batch_size, augment, crop_padding
        self.samples_per_micro_step = batch_size
        images = {split: load_images(data_dir, split) for split in ('train', 'val')}
        self.images = {split: (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device),  # (N, H, W, C) -> (N, C, H, W)
                               torch.from_numpy(y).to(device)) for split, (x, y) in images.items()}
        self.mean = torch.tensor(meta['mean'], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(meta['std'], device=device).view(1, -1, 1, 1)

    def normalize(self, x):
        return (x.float() / 255 - self.mean) / self.std

    def random_crop_flip(self, x, shifts, flips):
        """Per-sample crop of a zero-padded image and horizontal flip, as one gather on the device."""
        B, C, H, W = x.shape
        x = F.pad(x, (self.crop_padding,) * 4)  # (B, C, H + 2p, W + 2p)
        rows = shifts[:, :1] + torch.arange(H, device=x.device)  # (B, H)
        cols = shifts[:, 1:] + torch.arange(W, device=x.device)  # (B, W)
        cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reverses the column order
        b, c = torch.arange(B, device=x.device), torch.arange(C, device=x.device)
        return x[b[:, None, None, None], c[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]

    def get_batches(self, split, n_total, rows, gen):
        x_all, y_all = self.images[split]
        B, p = self.batch_size, self.crop_padding
        ix = torch.randint(len(x_all), (n_total, B), generator=gen)[rows].to(self.device)
        shifts = torch.randint(2 * p + 1, (n_total, B, 2), generator=gen)[rows].to(self.device)
        flips = (torch.rand((n_total, B), generator=gen) < 0.5)[rows].to(self.device)
        batches = []
        for i, s, f in zip(ix, shifts, flips):
            x = self.random_crop_flip(x_all[i], s, f) if self.augment else x_all[i]
            batches.append((self.normalize(x), y_all[i]))
        return batches

    def eval_batches(self, split, rank, world_size):
        """All of the split, in order, in batches of batch_size dealt round-robin to the processes."""
        x_all, y_all = self.images[split]
        B = self.batch_size
        for start in range(rank * B, len(x_all), world_size * B):
            yield self.normalize(x_all[start:start + B]), y_all[start:start + B]
