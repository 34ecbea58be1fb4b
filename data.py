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
        (images with mixup / CutMix: y is (B, num_classes) probabilities, else class ids)
    data.eval_splits, data.eval_batches(split, rank, world_size) -> this process's eval batches
    data.unit ('tok' | 'img'), data.samples_per_micro_step
One generator, seeded alike on every process, draws each iteration's global batch of n_total
micro-batches; each process keeps its rows, so N processes see the data of one process
accumulating N times.
"""
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F


DATASET_FILES = {'text': {'meta.json', 'train.bin', 'val.bin'},  # by meta['kind']: all that a dataset directory holds
                 'image': {'meta.json', 'train_x.npy', 'train_y.npy', 'val_x.npy', 'val_y.npy'}}


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

def load_images(data_dir, split, mmap=False):
    """x (N, H, W, C) uint8 and y (N,) int64 of a split; mmap: x stays on disk, read as it is indexed."""
    assert split in ('train', 'val'), split
    x = np.load(os.path.join(data_dir, f'{split}_x.npy'), mmap_mode='r' if mmap else None, allow_pickle=False)
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

    def __init__(self, data_dir, meta, device, batch_size, block_size, eval_iters, eval_seed):
        for split in ('train', 'val'):  # checked here, so that train.py fails before it writes anything
            path = os.path.join(data_dir, f'{split}.bin')
            n_tokens = os.path.getsize(path) // 2 if os.path.isfile(path) else 0
            if n_tokens <= block_size:
                raise DataError(f"{path} holds {n_tokens} tokens; block_size {block_size} needs at least "
                                f"{block_size + 1}: lower --block_size or prepare more data")
            top = int(np.memmap(path, dtype=np.uint16, mode='r').max())  # one pass over the file
            if top >= meta['vocab_size']:
                raise DataError(f"{path} holds token id {top}, outside the vocabulary of its meta.json (vocab_size "
                                f"{meta['vocab_size']}); prepare the dataset again")
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


def center_crop(x, size):
    """The central size x size of images (..., H, W)."""
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]

def padded_crops(x, shifts, flips, size, padding):
    """Per-sample size x size crop of the zero-padded images and horizontal flip, as one gather on the device."""
    B, C, H, W = x.shape
    x = F.pad(x, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    rows = shifts[:, :1] + torch.arange(size, device=x.device)  # (B, size)
    cols = shifts[:, 1:] + torch.arange(size, device=x.device)  # (B, size)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reverses the column order
    b, c = torch.arange(B, device=x.device), torch.arange(C, device=x.device)
    return x[b[:, None, None, None], c[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]

def rrc_boxes(n, H, W, min_scale, gen, attempts=10):
    """torchvision's RandomResizedCrop boxes for n images at once: (n, 4) of top, left, height, width.
    Area min_scale..1 of the image's, aspect ratio 3/4..4/3 (log-uniform); the first of `attempts`
    draws that fits, else the whole image (torchvision's fallback for an image of ratio 1)."""
    area = H * W * torch.empty(n, attempts).uniform_(min_scale, 1.0, generator=gen)
    ratio = torch.empty(n, attempts).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen).exp()
    w, h = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
    fits = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits
    h = torch.where(fits.any(1), h.gather(1, first)[:, 0], H)
    w = torch.where(fits.any(1), w.gather(1, first)[:, 0], W)
    u = torch.rand(n, 2, generator=gen)
    top, left = (u[:, 0] * (H - h + 1)).floor(), (u[:, 1] * (W - w + 1)).floor()
    return torch.stack([top, left, h, w], 1).long()

def resized_crops(x, boxes, flips, size):
    """Each image's box resized to size x size (bilinear), mirrored where flips: one grid_sample."""
    B, C, H, W = x.shape
    top, left, h, w = boxes.to(x.device, torch.float32).unbind(1)
    theta = torch.zeros(B, 2, 3, device=x.device)  # output coords (-1..1) -> input coords, per image
    theta[:, 0, 0] = w / W * (1 - 2 * flips.float())  # a negative x scale mirrors
    theta[:, 0, 2] = (2 * left + w) / W - 1
    theta[:, 1, 1] = h / H
    theta[:, 1, 2] = (2 * top + h) / H - 1
    grid = F.affine_grid(theta, (B, C, size, size), align_corners=False)
    return F.grid_sample(x.float(), grid, mode='bilinear', padding_mode='border', align_corners=False)

def mix(x, y, lam, cut, center):
    """Mixup (cut False) or CutMix (cut True) of each image with the batch's reversed order.
    y: (B, K) probabilities; returns the mixed images and targets (rows still sum to 1)."""
    if cut:  # a box of about 1 - lam of the area, centered at `center` (fractions of H, W), clipped to the image
        H, W = x.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(center[0] * H), int(center[1] * W)
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)  # the area actually pasted
    else:
        x = lam * x + (1 - lam) * x.flip(0)
    return x, lam * y + (1 - lam) * y.flip(0)


class ImageData:
    """Images stored as uint8 (N, H, W, C), trained and evaluated at image_size (eval: the center crop).
    Held in device memory, or with stream=True read from the memmapped .npy files by data_workers
    threads, pinned on CUDA, while the iteration before trains (for sets larger than memory).
    Training batches are augmented on the device: crop='pad' (a random crop of the zero-padded image,
    the CIFAR recipe) or 'rrc' (random-resized-crop, the ImageNet recipe), flip, then mixup / CutMix."""
    unit = 'img'
    eval_splits = ('val',)

    def __init__(self, data_dir, meta, device, batch_size, image_size=0, augment=True, crop='pad', crop_padding=4,
                 rrc_min_scale=0.08, flip=True, mixup=0.0, cutmix=0.0, stream=False, data_workers=4):
        H, W, C = meta['shape']
        self.stored, self.size = (H, W), image_size or H
        if not 0 < self.size <= min(H, W):
            raise DataError(f"image_size ({image_size}) must be 0 (as stored) or at most the stored {H}x{W}")
        if crop not in ('pad', 'rrc'):
            raise DataError(f"unknown crop {crop!r}; choose 'pad' (CIFAR) or 'rrc' (random-resized-crop, ImageNet)")
        if not 0 < rrc_min_scale <= 1 or mixup < 0 or cutmix < 0 or data_workers < 1:
            raise DataError(f"need 0 < rrc_min_scale <= 1, mixup >= 0, cutmix >= 0, data_workers >= 1; got "
                            f"{rrc_min_scale}, {mixup}, {cutmix}, {data_workers}")
        self.device, self.batch_size, self.augment, self.crop, self.crop_padding = device, batch_size, augment, crop, crop_padding
        self.rrc_min_scale, self.flip, self.mixup, self.cutmix = rrc_min_scale, flip, mixup, cutmix
        self.num_classes, self.stream = meta['num_classes'], stream
        self.samples_per_micro_step = batch_size
        self.images = {}
        for split in ('train', 'val'):
            try:
                x, y = load_images(data_dir, split, mmap=stream)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read the {split} images of {data_dir} ({e}); prepare the dataset again") from None
            if (len(x) == 0 or list(x.shape[1:]) != meta['shape'] or y.shape != (len(x),)
                    or not 0 <= y.min() <= y.max() < meta['num_classes']):
                raise DataError(f"the {split} images of {data_dir} do not fit its meta.json (none, a shape other than "
                                f"{meta['shape']}, or labels outside 0..{meta['num_classes'] - 1}); prepare the dataset again")
            x = x if stream else torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)  # (N, C, H, W)
            self.images[split] = (x, torch.from_numpy(y).to(device))
        self.mean = torch.tensor(meta['mean'], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(meta['std'], device=device).view(1, -1, 1, 1)
        self.pool = ThreadPoolExecutor(data_workers) if stream else None
        self.workers = data_workers
        self.ahead = None  # stream: the next iteration's batches, being read

    def normalize(self, x):
        return (x.float() / 255 - self.mean) / self.std

    def read(self, split, ix):
        """Start reading images ix (a CPU tensor) of split; returns a function that waits for them
        and gives them as (B, C, H, W) uint8 on the device."""
        x_all = self.images[split][0]
        if not self.stream:
            return lambda: x_all[ix.to(self.device)]
        buf = torch.empty((len(ix), *x_all.shape[1:]), dtype=torch.uint8, pin_memory=self.device.startswith('cuda'))
        out, ix = buf.numpy(), ix.numpy()
        bounds = np.linspace(0, len(ix), self.workers + 1).astype(int)  # each thread reads a slice of the batch
        parts = [self.pool.submit(np.take, x_all, ix[a:b], 0, out[a:b], 'clip') for a, b in zip(bounds, bounds[1:]) if b > a]
        def wait():
            for part in parts:
                part.result()
            return buf.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        return wait

    def draw(self, split, n_total, rows, gen):
        """The images and augmentation of an iteration's n_total micro-batches, drawn alike on every
        process; this process's rows of them, each with its read started."""
        (H, W), B, S = self.stored, self.batch_size, self.size
        ix = torch.randint(len(self.images[split][1]), (n_total, B), generator=gen)
        if self.crop == 'pad':
            crops = torch.randint(H + 2 * self.crop_padding - S + 1, (n_total, B, 2), generator=gen)
        else:
            crops = rrc_boxes(n_total * B, H, W, self.rrc_min_scale, gen).view(n_total, B, 4)
        flips = (torch.rand((n_total, B), generator=gen) < 0.5) & self.flip
        mixes = [None] * n_total
        if self.mixup > 0 or self.cutmix > 0:  # per micro-batch: mixup or CutMix (both on: each half the time, as timm)
            seeds, u = torch.randint(2 ** 62, (n_total,), generator=gen), torch.rand((n_total, 3), generator=gen)
            cuts = (u[:, 0] < 0.5) if self.mixup > 0 and self.cutmix > 0 else torch.full((n_total,), self.cutmix > 0)
            alphas = [self.cutmix if cut else self.mixup for cut in cuts]
            # lam ~ Beta(alpha, alpha) from numpy, seeded from gen: torch's Beta takes no generator
            mixes = [(float(np.random.default_rng(int(seed)).beta(a, a)), bool(cut), center.tolist())
                     for seed, a, cut, center in zip(seeds, alphas, cuts, u[:, 1:])]
        return [(self.read(split, i), i, c, f, m) for i, c, f, m in zip(ix[rows], crops[rows], flips[rows], mixes[rows])]

    def get_batches(self, split, n_total, rows, gen):
        key = (split, n_total, rows)
        if self.ahead is not None and self.ahead[0] == key and torch.equal(self.ahead[1], gen.get_state()):
            _, _, after, plan = self.ahead  # read while the iteration before trained
            gen.set_state(after)
        else:
            plan = self.draw(split, n_total, rows, gen)
        if self.stream:  # draw the next iteration on a copy of the generator and start its reads; the next call takes them
            copy = torch.Generator()
            copy.set_state(gen.get_state())
            next_plan = self.draw(split, n_total, rows, copy)
            self.ahead = (key, gen.get_state(), copy.get_state(), next_plan)
        y_all = self.images[split][1]
        return [self.augment_batch(wait(), y_all[i.to(self.device)], c, f, m) for wait, i, c, f, m in plan]

    def augment_batch(self, x, y, crops, flips, mixing):
        if not self.augment:  # the images as eval sees them
            return self.normalize(center_crop(x, self.size)), y
        crops, flips = crops.to(self.device), flips.to(self.device)
        if self.crop == 'pad':
            x = padded_crops(x, crops, flips, self.size, self.crop_padding)
        else:
            x = resized_crops(x, crops, flips, self.size)
        x = self.normalize(x)
        if mixing is None:
            return x, y
        return mix(x, F.one_hot(y, self.num_classes).float(), *mixing)

    def eval_batches(self, split, rank, world_size):
        """All of the split, in order, center-cropped, in batches of batch_size dealt round-robin to the
        processes; stream: the next batch is read while this one is evaluated."""
        x_all, y_all = self.images[split]
        B = self.batch_size
        starts = range(rank * B, len(x_all), world_size * B)
        reads = (self.read(split, torch.arange(s, min(s + B, len(x_all)))) for s in starts)
        wait = next(reads, None)
        for start in starts:
            x, wait = wait(), next(reads, None)
            yield self.normalize(center_crop(x, self.size)), y_all[start:start + B]
