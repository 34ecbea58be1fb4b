"""
What the ImageNet recipe adds to data.py's image batches: random-resized crops, mixup / CutMix
(timm's and DeiT's), and images streamed from the memmapped .npy files by threads while the
iteration before trains, for sets larger than memory. All of it batched on the device and drawn
from the run's data generator, so that streaming, DDP and resume see the same batches.
"""
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------
# random-resized-crop


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
