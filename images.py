"""
The image batches: ImageData holds a dataset's images on the device, or streams them from the memmapped .npy
files by threads while the iteration before trains (for sets larger than memory), and augments them there per
sample. The CIFAR recipe: padded crops and flips; the ImageNet one adds random-resized crops, 3-Augment with
color jitter (DeiT III's), random erasing and mixup / CutMix (timm's and DeiT's). All of it is batched on the
device and drawn from the run's data generator, so that streaming, DDP and resume see the same batches.
"""
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from data import load_images
from datachecks import check_image_options, check_image_split
from devices import pin_memory, to_device

# ----------------------------------------------------------------------------------------
# crops: center (eval), padded (CIFAR), random-resized (ImageNet)


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



def random_boxes(n, H, W, scale, log_ratio, gen, attempts=10):
    """n boxes at once, (n, 4) of top, left, height, width, and whether each fits: area scale[0]..scale[1] of
    the image's, aspect ratio exp(log_ratio[0]..log_ratio[1]) (log-uniform); the first of `attempts` draws
    that fits in the image; where none fits, the whole image (torchvision's fallback for an image of ratio 1)."""
    area = H * W * torch.empty(n, attempts).uniform_(*scale, generator=gen)
    ratio = torch.empty(n, attempts).uniform_(*log_ratio, generator=gen).exp()
    w, h = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
    fits = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits
    h = torch.where(fits.any(1), h.gather(1, first)[:, 0], H)
    w = torch.where(fits.any(1), w.gather(1, first)[:, 0], W)
    u = torch.rand(n, 2, generator=gen)
    top, left = (u[:, 0] * (H - h + 1)).floor(), (u[:, 1] * (W - w + 1)).floor()
    return torch.stack([top, left, h, w], 1).long(), fits.any(1)


def rrc_boxes(n, H, W, min_scale, gen):
    """torchvision's RandomResizedCrop boxes: area min_scale..1 of the image's, aspect ratio 3/4..4/3."""
    return random_boxes(n, H, W, (min_scale, 1.0), (math.log(3 / 4), math.log(4 / 3)), gen)[0]


def resized_crops(x, boxes, flips, size):
    """Each image's box resized to size x size (bilinear), mirrored where flips: one grid_sample."""
    B, C, H, W = x.shape
    top, left, h, w = boxes.float().unbind(1)
    theta = torch.zeros(B, 2, 3, device=x.device)  # output coords (-1..1) -> input coords, per image
    theta[:, 0, 0] = w / W * (1 - 2 * flips.float())  # a negative x scale mirrors
    theta[:, 0, 2] = (2 * left + w) / W - 1
    theta[:, 1, 1] = h / H
    theta[:, 1, 2] = (2 * top + h) / H - 1
    grid = F.affine_grid(theta, (B, C, size, size), align_corners=False)
    return F.grid_sample(x.float(), grid, mode='bilinear', padding_mode='border', align_corners=False)

# ----------------------------------------------------------------------------------------
# 3-Augment (DeiT III, Touvron et al. 2022) and random erasing (Zhong et al. 2017; timm's, as DeiT uses it)


def draw_three_augment(shape, gen):
    """Per image: which of grayscale, solarization, Gaussian blur (0, 1, 2), and the blur's sigma, 0.1..2 px at
    224 px (DeiT III's), in units of the image's width / 224: the same blur at every resolution."""
    return torch.randint(3, shape, generator=gen), torch.empty(shape).uniform_(0.1 / 224, 2.0 / 224, generator=gen)


def gaussian_blur(x, sigma):
    """Each image (B, C, H, W) blurred with its own sigma (B,) in pixels, up to W / 112: two grouped 1-D
    convolutions over 3 sigma each side."""
    B, C, H, W = x.shape
    radius = math.ceil(3 * W / 112)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B * C, 2 * radius + 1)
    x = x.reshape(1, B * C, H, W)  # every image's channel its own group
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode='replicate'), kernel[:, None, None, :], groups=B * C)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode='replicate'), kernel[:, None, :, None], groups=B * C)
    return x.view(B, C, H, W)


def grayscale(x):
    """ITU-R 601 luma (as torchvision), kept as C channels."""
    if x.size(1) == 1:
        return x
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None].expand_as(x)


def three_augment(x, choice, sigma):
    """One of grayscale, solarization (pixels >= 128 inverted) and Gaussian blur (sigma in image widths) per
    image; x on 0..255."""
    choice = choice.view(-1, 1, 1, 1)
    out = torch.where(choice == 0, grayscale(x), torch.where(x >= 128, 255 - x, x))
    return torch.where(choice == 2, gaussian_blur(x, sigma * x.size(-1)), out)


def color_jitter(x, factors):
    """Brightness, contrast and saturation scaled by factors (B, 3), in this order; x on 0..255."""
    f = factors.view(-1, 3, 1, 1, 1).unbind(1)
    x = (x * f[0]).clamp(0, 255)
    mean = grayscale(x).mean((1, 2, 3), keepdim=True)
    x = (mean + (x - mean) * f[1]).clamp(0, 255)
    gray = grayscale(x)
    return (gray + (x - gray) * f[2]).clamp(0, 255)


def draw_erasing(n, B, H, W, prob, gen):
    """Per micro-batch: which images get a box erased, the boxes (area 2-33 % of the image, aspect ratio 0.3..3.3),
    and a seed for the noise that fills them."""
    boxes, fits = random_boxes(n * B, H, W, (0.02, 1 / 3), (math.log(0.3), math.log(1 / 0.3)), gen)
    erase = (torch.rand(n * B, generator=gen) < prob) & fits
    return erase.view(n, B), boxes.view(n, B, 4), torch.randint(2 ** 62, (n,), generator=gen).tolist()


def draw_recolor_and_erasing(shape, size, three, jitter, erasing, gen):
    """The draws of 3-Augment, color jitter and random erasing for (n, B) images of size x size; one that is off
    draws nothing, so that the others' batches stay as they were."""
    draws = {}
    if three:
        draws['three'] = draw_three_augment(shape, gen)
    if jitter > 0:
        draws['jitter'] = torch.empty(*shape, 3).uniform_(1 - jitter, 1 + jitter, generator=gen)
    if erasing > 0:
        draws['erase'] = draw_erasing(*shape, size, size, erasing, gen)
    return draws


def recolor(x, draws):
    """3-Augment, then color jitter, where draws has them; x on 0..255."""
    if 'three' in draws:
        x = three_augment(x, *draws['three'])
    if 'jitter' in draws:
        x = color_jitter(x, draws['jitter'])
    return x


def random_erasing(x, erase, boxes, seed):
    """Each image with `erase` gets its box filled with normal noise (x is normalized): timm's mode='pixel'."""
    B, C, H, W = x.shape
    top, left, h, w = boxes[:, :, None].unbind(1)  # each (B, 1)
    rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    inside = ((rows >= top) & (rows < top + h))[:, :, None] & ((cols >= left) & (cols < left + w))[:, None, :]  # (B, H, W)
    noise = torch.randn(x.shape, generator=torch.Generator(x.device).manual_seed(int(seed)), device=x.device)
    return torch.where((inside & erase[:, None, None])[:, None], noise, x)

# ----------------------------------------------------------------------------------------
# mixup / CutMix


def draw_mixes(n, mixup, cutmix, gen):
    """Per micro-batch: (lam, cut, center) for mix(). With both on, each micro-batch takes one of the
    two, half the time each (as timm)."""
    seeds, u = torch.randint(2 ** 62, (n,), generator=gen), torch.rand((n, 3), generator=gen)
    cuts = (u[:, 0] < 0.5) if mixup > 0 and cutmix > 0 else torch.full((n,), cutmix > 0)
    alphas = [cutmix if cut else mixup for cut in cuts]
    # lam ~ Beta(alpha, alpha) from numpy, seeded from gen: torch's Beta takes no generator
    return [(float(np.random.default_rng(int(seed)).beta(a, a)), bool(cut), center.tolist())
            for seed, a, cut, center in zip(seeds, alphas, cuts, u[:, 1:])]


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

# ----------------------------------------------------------------------------------------
# streaming


class Stream:
    """Reads images from a memmapped (N, H, W, C) array in `workers` threads into pinned memory (CUDA),
    and keeps the next iteration's batches being read while this one trains."""

    def __init__(self, workers, pin):
        self.pool, self.workers, self.pin = ThreadPoolExecutor(workers), workers, pin
        self.ahead = None  # (key, generator state before, after, plan) of the next iteration

    def read(self, x_all, ix, device):
        """Start reading images ix (a CPU tensor); returns a function that waits for them and gives them
        as (B, C, H, W) uint8 on the device."""
        buf = torch.empty((len(ix), *x_all.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
        out, ix = buf.numpy(), ix.numpy()
        bounds = np.linspace(0, len(ix), self.workers + 1).astype(int)  # each thread reads a slice of the batch
        parts = [self.pool.submit(np.take, x_all, ix[a:b], 0, out[a:b], 'clip') for a, b in zip(bounds, bounds[1:]) if b > a]

        def wait():
            for part in parts:
                part.result()
            return buf.to(device, non_blocking=True).permute(0, 3, 1, 2)
        return wait

    def plan(self, draw, key, gen):
        """draw(gen), the plan of this iteration: the one read ahead if it was drawn from gen's state for
        the same key; then the next iteration's, drawn on a copy of gen, starts reading."""
        if self.ahead is not None and self.ahead[0] == key and torch.equal(self.ahead[1], gen.get_state()):
            _, _, after, plan = self.ahead
            gen.set_state(after)
        else:
            plan = draw(gen)
        copy = torch.Generator()
        copy.set_state(gen.get_state())
        next_plan = draw(copy)
        self.ahead = (key, gen.get_state(), copy.get_state(), next_plan)
        return plan

# ----------------------------------------------------------------------------------------
# the batches


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
