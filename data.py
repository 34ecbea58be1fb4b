"""
A dataset directory (written by prepare_data.py), and the batches train.py draws from it.

    text:  train.bin, val.bin: flat uint16 token ids, as nanoGPT's
    image: {train,val}_x.npy (N, H, W, C) uint8, channels last; {train,val}_y.npy (N,) int64
    meta.json: {"kind": "text", "vocab_size", "tokenizer": "char" | "gpt2", "itos" (char only),
                "train_tokens", "val_tokens", "train_stamp", "val_stamp" (each file's bytes and mtime_ns)}
               {"kind": "image", "shape": [H, W, C], "num_classes", "class_names", "mean", "std"
                (per channel, of the train pixels / 255), "train_size", "val_size"}
A directory with train.bin and val.bin and no meta.json is nanoGPT's format (GPT-2 BPE tokens).

TextData and ImageData share one interface: get_batches(split, n_total, rows, gen) -> [(x, y)], one per
micro-step, and eval_batches(split, rank, world_size). One generator, seeded alike on every process, draws
an iteration's n_total micro-batches; each process keeps its rows, so N processes train like one process
accumulating N times.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

from checks import DataError, check_image_options, check_image_split, check_token_files, read_meta
from devices import pin_memory, to_device
from imagenet import (Stream, draw_mixes, draw_recolor_and_erasing, mix, random_erasing, recolor, resized_crops,
                      rrc_boxes)

DATASET_FILES = {'text': {'meta.json', 'train.bin', 'val.bin'},  # by meta['kind']: all that a dataset directory holds
                 'image': {'meta.json', 'train_x.npy', 'train_y.npy', 'val_x.npy', 'val_y.npy'}}
GPT2_BPE = dict(kind='text', tokenizer='gpt2', vocab_size=50257)  # the meta of nanoGPT's token files


# ----------------------------------------------------------------------------------------
# readers


def load_meta(data_dir, log=print):
    has = lambda name: os.path.isfile(os.path.join(data_dir, name))
    if not has('meta.json') and has('train.bin') and has('val.bin'):
        log(f"{data_dir} has train.bin and val.bin but no meta.json: read as nanoGPT's format "
            "(uint16 GPT-2 BPE tokens)")
        return dict(GPT2_BPE)
    return read_meta(data_dir)


def load_images(data_dir, split, mmap=False):
    """x (N, H, W, C) uint8 and y (N,) int64 of a split; mmap: x stays on disk, read as it is indexed."""
    x = np.load(os.path.join(data_dir, f'{split}_x.npy'), mmap_mode='r' if mmap else None, allow_pickle=False)
    y = np.load(os.path.join(data_dir, f'{split}_y.npy'), allow_pickle=False)
    return x, y


def gpt2_encoding():
    try:
        import tiktoken
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # offline without a cache raises whatever the HTTP client raised
        raise DataError(f"tiktoken cannot load the gpt2 encoding ({type(e).__name__}); offline? set TIKTOKEN_CACHE_DIR "
                        "to a folder holding tiktoken's cache files") from None


def get_tokenizer(meta):
    """(encode, decode) of a text dataset's meta."""
    if meta.get('tokenizer') == 'gpt2':
        enc = gpt2_encoding()
        encode = lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})  # in a prompt, the EOT token, as in nanoGPT
        return encode, lambda ids: enc.decode([int(i) for i in ids])
    if meta.get('tokenizer') == 'char':
        itos = meta['itos']
        stoi = {c: i for i, c in enumerate(itos)}

        def encode(s):
            unknown = dict.fromkeys(c for c in s if c not in stoi)  # in order of appearance
            if unknown:
                raise ValueError("characters not in the vocabulary: " + ', '.join(map(repr, unknown)))
            return [stoi[c] for c in s]
        return encode, lambda ids: ''.join(itos[i] for i in ids)
    raise ValueError(f"no tokenizer in meta (kind={meta.get('kind')!r}, tokenizer={meta.get('tokenizer')!r})")

# ----------------------------------------------------------------------------------------
# text: random windows of block_size tokens, the next token as target


class TextData:
    unit = 'tok'
    eval_splits = ('train', 'val')

    def __init__(self, data_dir, meta, device, batch_size, block_size, eval_iters, eval_seed):
        check_token_files(data_dir, meta, block_size)
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
            x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in row])  # (B, T)
            y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in row])  # x one token on
            if pin_memory(self.device):  # the copy then runs asynchronously
                x, y = x.pin_memory(), y.pin_memory()
            batches.append((x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)))
        return batches

    def eval_batches(self, split, rank, world_size):
        """eval_iters random batches, the same at every eval; this process's share of them."""
        gen = torch.Generator().manual_seed(self.eval_seed)
        return self.get_batches(split, self.eval_iters, slice(rank, None, world_size), gen)

# ----------------------------------------------------------------------------------------
# images: held on the device (or streamed, imagenet.py), augmented there per sample


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


class ImageData:
    """Images trained at image_size (crop='pad': a random crop of the zero-padded image, the CIFAR recipe;
    'rrc': random-resized-crop, the ImageNet one), flipped, 3-Augmented and color-jittered, normalized,
    randomly erased, then mixed (mixup / CutMix); evaluated on the center crop of that size."""
    unit = 'img'
    eval_splits = ('val',)

    def __init__(self, data_dir, meta, device, batch_size, image_size=0, augment=True, crop='pad', crop_padding=4,
                 rrc_min_scale=0.08, flip=True, mixup=0.0, cutmix=0.0, stream=False, data_workers=4,
                 three_augment=False, color_jitter=0.0, random_erasing=0.0):
        H, W, C = meta['shape']
        self.stored, self.size = (H, W), image_size or H
        check_image_options(data_dir, meta, image_size, crop, rrc_min_scale, mixup, cutmix, data_workers)
        self.device, self.batch_size, self.augment = device, batch_size, augment
        self.crop, self.crop_padding, self.rrc_min_scale = crop, crop_padding, rrc_min_scale
        self.flip, self.mixup, self.cutmix = flip, mixup, cutmix
        self.recolor_and_erasing = (three_augment, color_jitter, random_erasing)
        self.num_classes, self.samples_per_micro_step = meta['num_classes'], batch_size
        self.images = {}
        for split in ('train', 'val'):
            x, y = check_image_split(data_dir, split, meta, lambda: load_images(data_dir, split, mmap=stream))
            x = x if stream else torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)  # (N, C, H, W)
            self.images[split] = (x, torch.from_numpy(y).to(device))
        self.mean = torch.tensor(meta['mean'], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(meta['std'], device=device).view(1, -1, 1, 1)
        self.stream = Stream(data_workers, pin=pin_memory(device)) if stream else None

    def normalize(self, x):
        return (x.float() / 255 - self.mean) / self.std

    def read(self, split, ix):
        """Start reading images ix (a CPU tensor to stream, else on the device); a function that gives them as
        (B, C, H, W) uint8 on the device."""
        x_all = self.images[split][0]
        return self.stream.read(x_all, ix, self.device) if self.stream else lambda: x_all[ix]

    def draw(self, split, n_total, rows, gen):
        """An iteration's images and augmentation, drawn alike on every process: this process's rows,
        each with its read started."""
        (H, W), B, S = self.stored, self.batch_size, self.size
        ix = torch.randint(len(self.images[split][1]), (n_total, B), generator=gen)
        if self.crop == 'pad':
            crops = torch.randint(H + 2 * self.crop_padding - S + 1, (n_total, B, 2), generator=gen)
        else:
            crops = rrc_boxes(n_total * B, H, W, self.rrc_min_scale, gen).view(n_total, B, 4)
        draws = dict(crops=crops, flips=(torch.rand((n_total, B), generator=gen) < 0.5) & self.flip,
                     **draw_recolor_and_erasing((n_total, B), S, *self.recolor_and_erasing, gen))
        if self.mixup > 0 or self.cutmix > 0:
            draws['mix'] = draw_mixes(n_total, self.mixup, self.cutmix, gen)
        ix_device, draws = to_device((ix, draws), self.device)  # the iteration's random numbers, in one copy
        row_draws = lambda r: {k: tuple(t[r] for t in v) if isinstance(v, tuple) else v[r] for k, v in draws.items()}
        return [(self.read(split, (ix if self.stream else ix_device)[r]), ix_device[r], row_draws(r))
                for r in range(n_total)[rows]]

    def get_batches(self, split, n_total, rows, gen):
        draw = lambda g: self.draw(split, n_total, rows, g)
        plan = self.stream.plan(draw, (split, n_total, rows), gen) if self.stream else draw(gen)
        y_all = self.images[split][1]
        return [self.augment_batch(wait(), y_all[i], draws) for wait, i, draws in plan]

    def augment_batch(self, x, y, draws):
        if not self.augment:  # the images as eval sees them
            return self.normalize(center_crop(x, self.size)), y
        crops, flips = draws['crops'], draws['flips']
        if self.crop == 'pad':
            x = padded_crops(x, crops, flips, self.size, self.crop_padding)
        else:
            x = resized_crops(x, crops, flips, self.size)
        x = self.normalize(recolor(x.float(), draws))
        if 'erase' in draws:
            x = random_erasing(x, *draws['erase'])
        if 'mix' not in draws:
            return x, y
        return mix(x, F.one_hot(y, self.num_classes).float(), *draws['mix'])

    def eval_batches(self, split, rank, world_size):
        """All of the split, in order, center-cropped, in batches of batch_size dealt round-robin to the
        processes; streamed: the next batch is read while this one is evaluated. The last batch is padded to
        batch_size with label -1 (no loss, never correct): every batch has one shape, which a compiled model
        then runs with one graph."""
        x_all, y_all = self.images[split]
        B = self.batch_size
        starts = range(rank * B, len(x_all), world_size * B)
        reads = (self.read(split, torch.arange(s, min(s + B, len(x_all)), device=None if self.stream else self.device))
                 for s in starts)
        wait = next(reads, None)
        for start in starts:
            x, wait = wait(), next(reads, None)
            y = y_all[start:start + B]
            pad = B - len(y)  # 0 but for the last batch; every batch goes through the same ops, so same strides too
            x, y = torch.cat([x, x.new_zeros(pad, *x.shape[1:])]), torch.cat([y, y.new_full((pad,), -1)])
            yield self.normalize(center_crop(x, self.size)), y


@torch.no_grad()
def eval_sums(model, batches, ctx):
    """(sum of loss x samples, top-1 correct, samples) of model over batches, as one tensor; image labels of -1
    are padding."""
    total = 0
    for x, y in batches:
        with ctx:
            logits, loss = model(x, y)
        n = (y >= 0).sum().float() if y.dim() == 1 else torch.tensor(float(len(y)), device=y.device)
        total = total + torch.stack([loss.float() * n, (logits.argmax(-1) == y).sum().float(), n])
    return total
