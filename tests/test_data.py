"""Tests for the image pipeline: prepare_data.py imagefolder (JPEGs written here), data.py's
augmentations and streaming, and train.py on the prepared folder (streamed, resumed).
CPU only, no network. Run: python -m pytest -q tests/test_data.py
"""
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import data as D
import images
import prepare_data as pd
import sample
from model import ViT, ViTConfig
from test_train import REPO, assert_clean_error, assert_same_weights, load_ckpt, read_log, train

CLASSES = ['cat', 'dog', 'eel']
COLORS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]  # each class a color: learnable in a few steps


def write_folder(root, n_train=6, n_val=2, seed=0):
    """train/<class>/ and val/<class>/ of noisy JPEGs of odd sizes, plus a grayscale and a CMYK JPEG,
    a PNG with alpha and a file that is not an image."""
    Image = pytest.importorskip('PIL.Image')
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_val)):
        for c, color in zip(CLASSES, COLORS):
            os.makedirs(root / split / c)
            for i in range(n):
                h, w = rng.integers(18, 50, 2)
                img = np.clip(np.array(color) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f'{i:02d}.JPEG')
    Image.fromarray(rng.integers(0, 255, (30, 41), dtype=np.uint8)).save(root / 'train' / 'cat' / 'gray.jpg')
    Image.fromarray(rng.integers(0, 255, (33, 27, 4), dtype=np.uint8), 'CMYK').save(root / 'train' / 'dog' / 'cmyk.jpg')
    Image.fromarray(rng.integers(0, 255, (25, 31, 4), dtype=np.uint8), 'RGBA').save(root / 'train' / 'eel' / 'alpha.png')
    (root / 'train' / 'eel' / 'notes.txt').write_text('not an image')
    return root


def prepare(*argv):
    """prepare_data.main in this process; its SystemExit message, or None on success."""
    try:
        pd.main([str(a) for a in argv])
    except SystemExit as e:
        return str(e.code)
    return None


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp('imagefolder') / 'folder')


@pytest.fixture(scope='module')
def prepared(folder):
    out = folder.parent / 'data'
    assert prepare('imagefolder', '--input', folder, '--out_dir', out, '--image_size', 16, '--num_proc', 2) is None
    return out


# ----------------------------------------------------------------------------------------
# prepare_data.py imagefolder

def test_imagefolder_prepare(prepared, folder):
    meta = D.load_meta(prepared)
    assert meta['shape'] == [16, 16, 3] and meta['class_names'] == CLASSES and meta['num_classes'] == 3
    assert (meta['train_size'], meta['val_size']) == (3 * 6 + 3, 3 * 2)  # + gray, cmyk, png; notes.txt skipped
    assert sorted(os.listdir(prepared)) == ['meta.json', 'train_x.npy', 'train_y.npy', 'val_x.npy', 'val_y.npy']
    assert not [p for p in os.listdir(prepared.parent) if p.startswith('.')]  # no partial left behind
    x, y = D.load_images(prepared, 'train')
    xv, yv = D.load_images(prepared, 'val')
    assert x.dtype == np.uint8 and x.shape == (21, 16, 16, 3) and xv.shape == (6, 16, 16, 3)
    # sorted classes, sorted files: cat has 00..05 and gray.jpg, dog 00..05 and cmyk.jpg, eel 00..05 and alpha.png
    np.testing.assert_array_equal(y, [0] * 7 + [1] * 7 + [2] * 7)
    np.testing.assert_array_equal(yv, [0, 0, 1, 1, 2, 2])
    gray = x[6].astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    for i, color in zip((0, 7, 14), COLORS):  # a class's JPEG keeps its color (resize and JPEG are close to it)
        np.testing.assert_allclose(x[i].reshape(-1, 3).mean(0), color, atol=20)
    np.testing.assert_allclose(meta['mean'], x.reshape(-1, 3).mean(0) / 255, rtol=1e-12)
    np.testing.assert_allclose(meta['std'], x.reshape(-1, 3).std(0) / 255, rtol=1e-9)


def test_decode_resizes_shorter_side_and_center_crops(tmp_path):
    Image = pytest.importorskip('PIL.Image')
    img = np.zeros((24, 48, 3), dtype=np.uint8)  # 48 wide: red, green, blue thirds
    img[:, :16, 0] = img[:, 16:32, 1] = img[:, 32:, 2] = 255
    Image.fromarray(img).save(tmp_path / 'thirds.png')
    x = pd.decode_image(str(tmp_path / 'thirds.png'), 16)  # 24x48 -> 16x32 -> the middle 16 columns
    assert x.shape == (16, 16, 3)
    assert (x[:, 5:11, 1] == 255).all() and (x[:, 5:11, [0, 2]] == 0).all()  # green in the middle
    assert x[:, 0, 0].min() > 100 and x[:, -1, 2].min() > 100  # a little red and blue at the edges


@pytest.mark.parametrize('content, words', [(b'', 'is empty'), (b'\xff\xd8\xff\xe0 not a jpeg at all' * 3, 'cannot be decoded')])
def test_bad_image_file_is_named(folder, tmp_path, content, words):
    bad_folder = tmp_path / 'folder'
    shutil.copytree(folder, bad_folder)
    (bad_folder / 'val' / 'dog' / '01.JPEG').write_bytes(content)
    message = prepare('imagefolder', '--input', bad_folder, '--out_dir', tmp_path / 'data', '--image_size', 16, '--num_proc', 2)
    assert message.startswith('prepare_data.py: error: ') and '\n' not in message
    assert str(bad_folder / 'val' / 'dog' / '01.JPEG') in message and words in message
    assert not (tmp_path / 'data').exists()


def test_imagefolder_layout_errors(folder, tmp_path):
    flat = tmp_path / 'flat'
    shutil.copytree(folder / 'train', flat / 'train')
    os.makedirs(flat / 'val')
    shutil.copy(folder / 'val' / 'cat' / '00.JPEG', flat / 'val' / 'ILSVRC2012_val_00000001.JPEG')  # the official, unsorted val
    message = prepare('imagefolder', '--input', flat, '--out_dir', tmp_path / 'data')
    assert 'no class folders' in message and 'sort them' in message
    message = prepare('imagenet', '--input', folder, '--out_dir', tmp_path / 'data')
    assert 'not the 1000 wnids' in message
    assert not (tmp_path / 'data').exists()


@pytest.mark.parametrize('bad_file, chunk, done', [
    ('train/eel/03.JPEG', 4, dict(train=16, val=0)),  # the 18th of 21 train images: 4 saves of 4 are kept
    ('val/dog/01.JPEG', 2, dict(train=21, val=0)),  # in val: all train kept (the val images before it went in its task of 16)
])
def test_imagefolder_resumes_after_a_stop(folder, prepared, tmp_path, monkeypatch, capsys, bad_file, chunk, done):
    monkeypatch.setattr(pd, 'IMAGE_CHUNK', chunk)  # save the progress every `chunk` images
    stopped = tmp_path / 'folder'
    shutil.copytree(folder, stopped)
    bad = stopped / bad_file
    good = bad.read_bytes()
    bad.write_bytes(b'garbage')
    out, partial = tmp_path / 'data', tmp_path / '.data.partial'
    message = prepare('imagefolder', '--input', stopped, '--out_dir', out, '--image_size', 16, '--num_proc', 2)
    assert str(bad) in message and 'rerun the same command to continue' in message
    progress = json.loads((partial / 'progress.json').read_text())
    assert not out.exists() and (progress['train'], progress['val']) == (done['train'], done['val'])
    bad.write_bytes(good)
    capsys.readouterr()
    assert prepare('imagefolder', '--input', stopped, '--out_dir', out, '--image_size', 16, '--num_proc', 2) is None
    assert 'resuming' in capsys.readouterr().out and not partial.exists()
    assert D.load_meta(out) == D.load_meta(prepared)  # the same as a straight run, channel statistics included
    for split in ('train', 'val'):
        for a, b in zip(D.load_images(out, split), D.load_images(prepared, split)):
            np.testing.assert_array_equal(a, b)


def test_ctrl_c_mid_decoding_is_one_line(tmp_path):
    """Ctrl-C signals the terminal's whole process group, the decoding workers too: one line, no traceback from
    any process, and the partial dataset kept for a rerun (test_imagefolder_resumes_after_a_stop reruns one)."""
    Image = pytest.importorskip('PIL.Image')
    big = tmp_path / 'big.jpg'  # slow to decode, and many of them: the signal lands mid-decoding
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)).save(big)
    for split, n in (('train', 2000), ('val', 2)):
        for c in CLASSES[:2]:
            os.makedirs(tmp_path / 'in' / split / c)
            for i in range(n):
                os.link(big, tmp_path / 'in' / split / c / f'{i}.jpg')
    cmd = [sys.executable, 'prepare_data.py', 'imagefolder', '--input', str(tmp_path / 'in'), '--out_dir',
           str(tmp_path / 'out'), '--image_size', '16', '--num_proc', '2']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    # its own process group with SIGINT at its default, as a terminal's foreground job (a shell that started the
    # tests in the background, or under nohup, hands them SIGINT ignored)
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial = tmp_path / '.out.partial'
    for _ in range(600):
        if (partial / 'train_x.npy').exists() or p.poll() is not None:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # workers decoding
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err
    assert err.strip().splitlines()[-1].split('\r')[-1].startswith('prepare_data.py: interrupted'), err
    assert not (tmp_path / 'out').exists() and (partial / 'progress.json').exists()

def test_partial_dir_of_another_kind_is_left_alone(folder, tmp_path):
    partial = tmp_path / '.data.partial'
    partial.mkdir()
    (partial / 'mine.txt').write_text('keep me')
    message = prepare('imagefolder', '--input', folder, '--out_dir', tmp_path / 'data', '--image_size', 16)
    assert 'move it away' in message and (partial / 'mine.txt').read_text() == 'keep me'
    assert sorted(os.listdir(partial)) == ['mine.txt'] and not (tmp_path / 'data').exists()


# ----------------------------------------------------------------------------------------
# augmentation

def test_rrc_boxes_inside_the_image():
    gen = torch.Generator().manual_seed(0)
    H, W = 32, 24
    top, left, h, w = images.rrc_boxes(4000, H, W, 0.08, gen).unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    fitted = (h != H) | (w != W)  # the rest: the whole-image fallback
    assert fitted.float().mean() > 0.9
    area, ratio = (h * w / (H * W))[fitted], (w / h)[fitted]
    assert area.min() > 0.05 and area.max() <= 1 and area.mean() > 0.3  # 0.08..1 up to rounding
    assert ratio.min() > 3 / 4 * 0.8 and ratio.max() < 4 / 3 * 1.25  # 3/4..4/3 up to rounding
    assert (top.float().std() > 1) and (left.float().std() > 1)


def test_crops_and_flips():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    full = torch.tensor([[0, 0, 8, 8]] * 2)
    no, yes = torch.tensor([False, False]), torch.tensor([True, True])
    torch.testing.assert_close(images.resized_crops(x, full, no, 8), x)  # the whole image at its size: identity
    torch.testing.assert_close(images.resized_crops(x, full, yes, 8), x.flip(-1))
    box = torch.tensor([[1, 2, 4, 4], [3, 0, 4, 4]])  # same size as the output: an exact crop
    out = images.resized_crops(x, box, torch.tensor([False, True]), 4)
    torch.testing.assert_close(out[0], x[0, :, 1:5, 2:6])
    torch.testing.assert_close(out[1], x[1, :, 3:7, 0:4].flip(-1))
    half = images.resized_crops(x, full, no, 4)  # downscaled by 2: each output pixel averages a 2x2 block
    torch.testing.assert_close(half, torch.nn.functional.avg_pool2d(x, 2))
    # padded crops: shift = padding is the image itself
    xi = x.to(torch.uint8)
    shifts = torch.tensor([[2, 2], [0, 4]])
    out = images.padded_crops(xi, shifts, torch.tensor([False, True]), 8, 2)
    assert torch.equal(out[0], xi[0])
    # rows -2..5, columns 2..9 of the image (8, 9 and -2, -1 are padding), mirrored
    assert torch.equal(out[1, :, 2:, 2:], xi[1, :, :6, 2:].flip(-1))
    assert (out[1, :, :2] == 0).all() and (out[1, :, :, :2] == 0).all()
    assert torch.equal(images.center_crop(x, 4), x[..., 2:6, 2:6])


@pytest.mark.parametrize('cut', [False, True])
def test_mix_targets_sum_to_one(cut):
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 10, 10), torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    xm, ym = images.mix(x, y, 0.7, cut, (0.3, 0.6))
    torch.testing.assert_close(ym.sum(1), torch.ones(4))
    lam = ym[0, 0].item()  # image 0 mixed with image 3
    assert ym[0, 3].item() == pytest.approx(1 - lam) and 0 < lam < 1
    if cut:  # the pasted pixels come from the reversed batch, and lam is the part left
        pasted = (xm[0] != x[0]).any(0)
        assert torch.equal(xm[0][:, pasted], x[3][:, pasted])
        assert lam == pytest.approx(1 - pasted.float().mean().item())
    else:
        assert lam == pytest.approx(0.7)
        torch.testing.assert_close(xm[0], 0.7 * x[0] + 0.3 * x[3])


def image_data(prepared, **kw):
    meta = D.load_meta(prepared)
    return images.ImageData(str(prepared), meta, 'cpu', **{'batch_size': 4, **kw})


def test_augment_off_is_the_eval_view(prepared):
    data = image_data(prepared, image_size=12, crop='rrc', mixup=0.8, augment=False)
    gen = torch.Generator().manual_seed(0)
    ix = torch.randint(21, (2, 4), generator=torch.Generator().manual_seed(0))  # the indices draw() takes first
    x_all, y_all = D.load_images(prepared, 'train')
    for (x, y), i in zip(data.get_batches('train', 2, slice(None), gen), ix):
        expected = torch.from_numpy(x_all[i.numpy()]).permute(0, 3, 1, 2)[..., 2:14, 2:14]
        torch.testing.assert_close(x, data.normalize(expected))
        assert torch.equal(y, torch.from_numpy(y_all[i.numpy()]))


def test_stream_matches_memory_and_splits_rows(prepared):
    """Streamed (prefetching, 2 threads) and in-memory batches are the same; rows of one draw are
    what N processes get: they read only their rows, and the generator ends in the same state."""
    cfg = dict(image_size=12, crop='rrc', mixup=0.8, cutmix=1.0, three_augment=True, color_jitter=0.3, random_erasing=0.5)
    memory, stream = image_data(prepared, **cfg), image_data(prepared, stream=True, data_workers=2, **cfg)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(3):  # the second and third calls take the batches read ahead
        for (xa, ya), (xb, yb) in zip(memory.get_batches('train', 4, slice(None), g1),
                                      stream.get_batches('train', 4, slice(None), g2), strict=True):
            torch.testing.assert_close(xa, xb)
            torch.testing.assert_close(ya, yb)
            torch.testing.assert_close(ya.sum(1), torch.ones(4))  # soft targets of mixup / CutMix
    assert torch.equal(g1.get_state(), g2.get_state())
    whole = memory.get_batches('train', 4, slice(None), torch.Generator().manual_seed(2))
    parts = [b for r in (slice(0, 2), slice(2, 4)) for b in stream.get_batches('train', 4, r, torch.Generator().manual_seed(2))]
    for (xa, ya), (xb, yb) in zip(whole, parts, strict=True):
        torch.testing.assert_close(xa, xb)
        torch.testing.assert_close(ya, yb)
    evals = [list(d.eval_batches('val', 0, 1)) for d in (memory, stream)]
    for (xa, ya), (xb, yb) in zip(*evals, strict=True):
        torch.testing.assert_close(xa, xb)
        assert torch.equal(ya, yb) and xa.shape[-1] == 12


# ----------------------------------------------------------------------------------------
# 3-Augment, color jitter, random erasing

def test_three_augment_applies_one_op_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 224, 224), generator=g).float()
    choice, sigma = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0.01, 0.01, 0.1, 0.01, 0.01, 2.0]) / 224  # image widths
    out = images.three_augment(x, choice, sigma)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for i in (0, 3):  # grayscale: every channel the luma
        torch.testing.assert_close(out[i], luma[i].expand(3, -1, -1))
    for i in (1, 4):  # solarization: pixels >= 128 inverted
        torch.testing.assert_close(out[i], torch.where(x[i] >= 128, 255 - x[i], x[i]))
    torch.testing.assert_close(out[2], x[2], rtol=0, atol=1e-3)  # sigma 0.1 px: all but the identity
    assert out[5].std() < 0.5 * x[5].std()  # sigma 2 px at 224 px smooths noise
    torch.testing.assert_close(out[5].mean(), x[5].mean(), rtol=0.02, atol=0)  # and keeps the brightness
    small = images.three_augment(x[5:, :, ::7, ::7], choice[5:], sigma[5:])  # the same blur at 32 px: 2/7 px
    torch.testing.assert_close(small, images.gaussian_blur(x[5:, :, ::7, ::7], torch.tensor([2 / 7])))
    one = torch.rand(2, 1, 8, 8) * 255  # one channel: grayscale is the identity
    torch.testing.assert_close(images.three_augment(one, torch.tensor([0, 0]), torch.ones(2)), one)


def test_color_jitter_scales_brightness_contrast_saturation():
    x = torch.rand(4, 3, 8, 8) * 200 + 20
    torch.testing.assert_close(images.color_jitter(x, torch.ones(4, 3)), x)
    bright = images.color_jitter(x, torch.tensor([[1.2, 1, 1]] * 4))
    torch.testing.assert_close(bright, (1.2 * x).clamp(0, 255))
    flat = images.color_jitter(x, torch.tensor([[1, 0, 1]] * 4))  # contrast 0: the mean gray everywhere
    assert flat.std(dim=(1, 2, 3)).max() < 1e-3
    gray = images.color_jitter(x, torch.tensor([[1, 1, 0]] * 4))  # saturation 0: grayscale
    torch.testing.assert_close(gray[:, 0], gray[:, 2])
    assert images.color_jitter(x, torch.full((4, 3), 1.3)).max() <= 255


def test_three_augment_and_jitter_are_drawn_per_image():
    """Each image of a micro-batch draws its own 3-Augment op (each about a third of the time in every micro-batch)
    and its own jitter factors, from (1 - j, 1 + j) around 1: darker as often as brighter."""
    draws = images.draw_recolor_and_erasing((4, 600), 16, True, 0.3, 0.0, torch.Generator().manual_seed(0))
    choice, sigma = draws['three']
    assert choice.shape == sigma.shape == (4, 600)
    for row in choice:
        assert [(row == op).float().mean().item() for op in range(3)] == pytest.approx([1 / 3] * 3, abs=0.07)  # 3.5 std
    factors = draws['jitter']
    assert factors.shape == (4, 600, 3) and 0.7 <= factors.min() < 0.72 and 1.28 < factors.max() <= 1.3
    assert (factors < 1).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert len(set(factors[0, :, 0].tolist())) == 600  # a factor per image, not one per micro-batch


def test_color_jitter_applies_brightness_then_contrast_then_saturation():
    """The order shows where a step clips at 255: each step as its definition, in that order."""
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255
    f = torch.tensor([1.8, 0.5, 1.6]).expand(5, 3)
    out = images.color_jitter(x, f)
    luma = lambda t: (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2])[:, None]
    y = (1.8 * x).clamp(0, 255)
    mean = luma(y).mean((1, 2, 3), keepdim=True)
    y = (mean + (y - mean) * 0.5).clamp(0, 255)
    y = (luma(y) + (y - luma(y)) * 1.6).clamp(0, 255)
    torch.testing.assert_close(out, y)
    brightness_last = (images.color_jitter(x, torch.tensor([1.0, 0.5, 1.6]).expand(5, 3)) * 1.8).clamp(0, 255)
    assert (out - brightness_last).abs().max() > 10  # the test can tell the orders apart


@pytest.mark.parametrize('mixup, cutmix', [(0.2, 0.0), (0.0, 0.2), (0.1, 10.0), (10.0, 0.1)])
def test_mix_strengths_are_betas_of_their_own_op(mixup, cutmix):
    """lam ~ Beta(a, a), symmetric about 1/2, with a the strength of the op the micro-batch drew: mixup's for
    mixup, CutMix's for CutMix (with both on, each half the time)."""
    mixes = images.draw_mixes(4000, mixup, cutmix, torch.Generator().manual_seed(0))
    for cut, alpha in ((False, mixup), (True, cutmix)):
        lam = np.array([m[0] for m in mixes if m[1] == cut])
        if alpha == 0:
            assert len(lam) == 0
            continue
        assert len(lam) == pytest.approx(4000 * (0.5 if mixup and cutmix else 1), rel=0.06)
        assert lam.mean() == pytest.approx(0.5, abs=0.03) and (lam < 0.5).mean() == pytest.approx(0.5, abs=0.04)
        spread = np.abs(lam - 0.5).mean()  # Beta(a, a): about 0.44 at a = 0.1, 0.4 at 0.2, 0.09 at 10
        assert spread > 0.35 if alpha < 1 else spread < 0.12


class BlockingCopies(torch.overrides.TorchFunctionMode):
    """Counts Tensor.to(device) without non_blocking=True: on CUDA, from pageable memory, each waits for all the
    work queued on the device."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_device = 'device' in kwargs or any(isinstance(a, (str, torch.device)) for a in args[1:])
        if func is torch.Tensor.to and to_device and not kwargs.get('non_blocking'):
            self.count += 1
        return func(*args, **kwargs)


def test_an_image_iteration_copies_to_the_device_without_blocking(prepared):
    """Every augmentation on, 4 micro-batches, and the EMA's update: the draws go to the device in one copy that
    does not block, and the rest runs there."""
    from optim import EMA
    data = image_data(prepared, image_size=12, crop='rrc', mixup=0.8, cutmix=1.0, three_augment=True, color_jitter=0.3,
                      random_erasing=0.5)
    model = ViT(ViTConfig(n_layer=1, n_head=2, n_embd=16, image_size=12, patch_size=4, num_classes=3, preset='dnt'))
    ema = EMA(model, 0.9)
    gen = torch.Generator().manual_seed(0)
    data.get_batches('train', 4, slice(None), gen)  # (the first EMA update copies the weights)
    ema.update_parameters(model)
    with BlockingCopies() as copies:
        for _ in range(2):
            batches = data.get_batches('train', 4, slice(None), gen)
            ema.update_parameters(model)
    assert copies.count == 0 and len(batches) == 4
    with BlockingCopies() as copies:
        torch.zeros(3).to('cpu')
        torch.zeros(3).to('cpu', non_blocking=True)
    assert copies.count == 1  # the counter sees a blocking copy


def test_random_erasing_fills_boxes_with_noise_at_its_rate():
    g = torch.Generator().manual_seed(0)
    erase, boxes, seeds = images.draw_erasing(1, 4000, 16, 16, 0.25, g)
    assert erase.shape == (1, 4000) and boxes.shape == (1, 4000, 4) and len(seeds) == 1 and isinstance(seeds[0], int)
    assert erase.float().mean().item() == pytest.approx(0.25, abs=0.02)
    top, left, h, w = boxes[0][erase[0]].unbind(1)
    area = (h * w).float() / 256
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 16).all() and (left + w <= 16).all()
    assert area.min() >= 0.02 * 0.5 and area.max() <= 1 / 3 * 1.1  # 2-33% of the image, up to rounding
    x = torch.zeros(4000, 3, 16, 16)
    out = images.random_erasing(x, erase[0], boxes[0], seeds[0])
    changed = out != 0
    assert not changed[~erase[0]].any()  # images not erased are untouched
    for i in torch.nonzero(erase[0])[:50, 0]:
        t, l, hh, ww = boxes[0, i].tolist()
        assert changed[i, :, t:t + hh, l:l + ww].all() and changed[i].sum() == 3 * hh * ww  # the box, all of it
    noise = out[erase[0]]
    noise = noise[noise != 0]
    assert abs(noise.mean()) < 0.05 and noise.std().item() == pytest.approx(1, abs=0.05)  # N(0, 1), as normalized pixels
    torch.testing.assert_close(images.random_erasing(x, erase[0], boxes[0], seeds[0]), out)  # its seed fixes the noise


def test_augmentations_off_draw_nothing_and_change_nothing(prepared):
    """With 3-Augment, jitter and erasing off, the batches are the crops and flips alone, and the generator
    moves by their draws only; each one on changes the batch and draws more."""
    plain = image_data(prepared, image_size=12)
    g = torch.Generator().manual_seed(3)
    batches = plain.get_batches('train', 2, slice(None), g)
    replay = torch.Generator().manual_seed(3)
    ix = torch.randint(21, (2, 4), generator=replay)
    shifts = torch.randint(16 + 2 * 4 - 12 + 1, (2, 4, 2), generator=replay)
    flips = torch.rand((2, 4), generator=replay) < 0.5
    assert torch.equal(g.get_state(), replay.get_state())
    x_all = torch.from_numpy(D.load_images(prepared, 'train')[0]).permute(0, 3, 1, 2)
    for (xb, _), i, s, f in zip(batches, ix, shifts, flips):
        torch.testing.assert_close(xb, plain.normalize(images.padded_crops(x_all[i], s, f, 12, 4)))
    for key, value in (('three_augment', True), ('color_jitter', 0.3), ('random_erasing', 0.9)):
        g_on = torch.Generator().manual_seed(3)
        on = image_data(prepared, image_size=12, **{key: value}).get_batches('train', 2, slice(None), g_on)
        assert not torch.equal(g_on.get_state(), g.get_state()), key
        assert not torch.equal(on[0][0], batches[0][0]), key
        assert on[0][0].shape == batches[0][0].shape and torch.isfinite(on[0][0]).all()

# ----------------------------------------------------------------------------------------
# train.py on the prepared folder: streamed, random-resized-crop, mixup/CutMix, eval, exact resume

def test_train_streams_evaluates_and_resumes(prepared, tmp_path, capsys):
    cfg = dict(n_layer=1, n_head=2, n_embd=32, patch_size=4, image_size=12, stream=True, data_workers=2, crop='rrc',
               mixup=0.8, cutmix=1.0, label_smoothing=0.1, batch_size=4, gradient_accumulation_steps=2,
               opt='adamw', learning_rate=1e-3, min_lr=1e-4, eval_interval=3, lr_decay_iters=6,
               three_augment=True, color_jitter=0.3, random_erasing=0.5, drop_path=0.2, ema_decay=0.5)
    train(tmp_path / 'straight', prepared, max_iters=6, **cfg)
    train(tmp_path / 'resumed', prepared, max_iters=3, **cfg)
    train(tmp_path / 'resumed', prepared, '--init_from=resume', max_iters=6, **cfg)
    a, b = load_ckpt(tmp_path / 'straight'), load_ckpt(tmp_path / 'resumed')
    assert a['model_args']['image_size'] == 12 and a['iter_num'] == b['iter_num'] == 6
    assert_same_weights(a['model'], b['model'], atol=0)
    assert_same_weights(a['ema'], b['ema'], atol=0)
    la, lb = read_log(tmp_path / 'straight'), read_log(tmp_path / 'resumed')
    assert [r['loss'] for r in la if 'loss' in r] == [r['loss'] for r in lb if 'loss' in r]
    vals = [r for r in la if 'val_loss' in r]
    assert [r['iter'] for r in vals] == [0, 3, 6] and all(0 <= r['val_acc'] <= 1 and math.isfinite(r['val_loss']) for r in vals)
    assert vals == [r for r in lb if 'val_loss' in r] and all(0 <= r['ema_val_acc'] <= 1 for r in vals)
    assert vals[0]['ema_val_loss'] == vals[0]['val_loss'] and vals[-1]['ema_val_loss'] != vals[-1]['val_loss']
    for ema, key in (('True', 'ema_val'), ('False', 'val')):  # sample.py scores the EMA where there is one
        sample.main(['--out_dir', str(tmp_path / 'straight'), '--device', 'cpu', '--dtype', 'float32', '--ema', ema])
        out = capsys.readouterr().out  # center crop 12 of 16
        acc, loss = map(float, re.search(r'top-1 accuracy on val: ([\d.]+)% .* loss ([\d.]+)', out).groups())
        assert acc == pytest.approx(100 * vals[-1][f'{key}_acc'], abs=0.006) and loss == pytest.approx(vals[-1][f'{key}_loss'], abs=1e-4)


def test_train_refuses_image_size_above_stored(prepared, tmp_path):
    r = train(tmp_path, prepared, check=False, image_size=32, patch_size=4, n_layer=1, n_head=2, n_embd=32)
    assert_clean_error(r, 'train.py: error: ', 'image_size (32)', '16x16')


def test_bench_times_the_loader(prepared):
    r = subprocess.run([sys.executable, 'bench.py', f'--loader={prepared}', '--image_size=12', "--crop='rrc'", '--mixup=0.8',
                        '--three_augment=True', '--color_jitter=0.3', '--random_erasing=0.25',
                        '--batch_size=4', '--gradient_accumulation_steps=2', '--warmup=1', '--iters=2', '--device=cpu'],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f'loader: {prepared}, 21 images of 16x16x3 -> 12 px, 2 x 4 images an iteration')
    assert 'three_augment=True color_jitter=0.3 random_erasing=0.25' in r.stdout
    rates = re.findall(r'^(read|read \+ augment on cpu) +([\d,]+) img/s$', r.stdout, re.M)
    assert [label for label, _ in rates] == ['read', 'read + augment on cpu'] and all(float(v.replace(',', '')) > 0 for _, v in rates)


# ----------------------------------------------------------------------------------------
# what the training batches are: next-token targets, every window, flips at the drawn rate

def test_text_batches_are_windows_and_their_next_tokens(tmp_path):
    """Each x is a window of the token file and y the same window one token on; over many draws the
    windows start everywhere from the first token to the last window that still has a target."""
    T, n = 8, 20
    tokens = np.random.default_rng(0).permutation(n).astype(np.uint16)  # distinct ids: x[0] tells the window
    for split in ('train', 'val'):
        tokens.tofile(tmp_path / f'{split}.bin')
    meta = dict(kind='text', tokenizer='char', vocab_size=n, itos=[chr(97 + i) for i in range(n)])
    data = D.TextData(str(tmp_path), meta, 'cpu', batch_size=16, block_size=T, eval_iters=4, eval_seed=0)
    where = {int(t): i for i, t in enumerate(tokens)}
    starts = set()
    batches = data.get_batches('train', 8, slice(None), torch.Generator().manual_seed(0))
    batches += list(data.eval_batches('val', 0, 1))
    for x, y in batches:
        assert x.shape == y.shape == (16, T) and x.dtype == y.dtype == torch.int64
        for xi, yi in zip(x.numpy(), y.numpy()):
            s = where[int(xi[0])]
            assert np.array_equal(xi, tokens[s:s + T]) and np.array_equal(yi, tokens[s + 1:s + 1 + T])
            starts.add(s)
    assert starts == set(range(n - T))  # the last window's target is the file's last token


@pytest.mark.parametrize('crop', ['pad', 'rrc'])
@pytest.mark.parametrize('flip', [True, False])
def test_training_batches_flip_half_the_images(tmp_path, crop, flip):
    """With crops that keep the whole image (no padding; rrc at scale 1), each training image is the
    stored one or its mirror: half of them mirrored with flip=True, none without."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    y = np.arange(16) % 2
    np.savez(tmp_path / 'img.npz', x_train=x, y_train=y, x_test=x, y_test=y)
    assert prepare('npz', '--input', tmp_path / 'img.npz', '--out_dir', tmp_path / 'data') is None
    data = image_data(tmp_path / 'data', batch_size=64, crop=crop, crop_padding=0, rrc_min_scale=1.0, flip=flip)
    stored = data.normalize(torch.from_numpy(x).permute(0, 3, 1, 2))  # (16, 1, 8, 8)
    mirrored = 0
    for xb, yb in data.get_batches('train', 8, slice(None), torch.Generator().manual_seed(0)):
        for img in xb:
            same = [i for i in range(16) if torch.allclose(img, stored[i], atol=1e-4)]
            flipped = [i for i in range(16) if torch.allclose(img, stored[i].flip(-1), atol=1e-4)]
            assert len(same) + len(flipped) == 1, "an image that is neither a stored one nor its mirror"
            mirrored += len(flipped)
    rate = mirrored / (8 * 64)
    assert (0.44 < rate < 0.56) if flip else rate == 0, rate  # 512 draws: 0.5 +- 2.7 std


def test_token_files_are_read_at_start_only_when_changed(tmp_path, monkeypatch):
    """A file as prepare_data.py wrote it (its stamp in meta.json) is not read at start; a changed one is read
    in full; nanoGPT's meta-less files are read at both ends."""
    (tmp_path / 'input.txt').write_text("the quick brown fox jumps over the lazy dog.\n" * 50)
    assert prepare('shakespeare_char', '--input', tmp_path / 'input.txt', '--out_dir', tmp_path / 'data') is None
    meta = D.load_meta(tmp_path / 'data')
    reads = []
    real = np.memmap
    monkeypatch.setattr(D.np, 'memmap', lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    D.TextData(str(tmp_path / 'data'), meta, 'cpu', 2, 8, 1, 0)
    assert reads == []
    ids = np.fromfile(tmp_path / 'data' / 'train.bin', dtype=np.uint16)
    ids[len(ids) // 2] = meta['vocab_size']  # one id outside the vocabulary, far from both ends
    ids.tofile(tmp_path / 'data' / 'train.bin')
    with pytest.raises(D.DataError, match=f"token id {meta['vocab_size']}, outside the vocabulary"):
        D.TextData(str(tmp_path / 'data'), meta, 'cpu', 2, 8, 1, 0)
    nanogpt = tmp_path / 'nanogpt'
    nanogpt.mkdir()
    tokens = np.zeros(3 << 20, dtype=np.uint16)
    tokens[-1] = 60000  # the last id: a file cut or padded wrongly shows at its end
    tokens.tofile(nanogpt / 'train.bin')
    tokens[:4].tofile(nanogpt / 'val.bin')
    with pytest.raises(D.DataError, match='token id 60000'):
        D.TextData(str(nanogpt), D.load_meta(nanogpt, log=lambda line: None), 'cpu', 2, 2, 1, 0)


def test_eval_batches_have_one_shape_and_count_each_image_once(prepared):
    """The last eval batch is padded to batch_size with label -1: one shape for a compiled model, and the
    padding adds no loss, no correct answer and no count."""
    data = image_data(prepared, batch_size=4, image_size=12)  # 6 val images: batches of 4 and 2 + 2 padding
    batches = list(data.eval_batches('val', 0, 1))
    assert [x.shape for x, _ in batches] == [(4, 3, 12, 12)] * 2 and batches[1][1].tolist()[2:] == [-1, -1]
    torch.manual_seed(0)
    model = ViT(ViTConfig(n_layer=1, n_head=1, n_embd=8, image_size=12, patch_size=4, num_classes=3)).eval()
    loss_sum, correct, n = D.eval_sums(model, batches, contextlib.nullcontext()).tolist()
    x, y = torch.cat([x for x, _ in batches])[:6], torch.cat([y for _, y in batches])[:6]
    with torch.no_grad():
        logits, loss = model(x, y)
    assert n == 6 and correct == (logits.argmax(-1) == y).sum().item()
    assert loss_sum / n == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize('case, words', [
    ('nested folder', ['holds folders (deeper)', 'must sit in it directly']),
    ('symlink to itself', ['loop.jpg cannot be decoded']),
    ('file name not UTF-8', None),  # read like any other
])
def test_imagefolder_odd_entries_are_read_or_refused_in_one_line(folder, tmp_path, case, words):
    src = tmp_path / 'src'
    shutil.copytree(folder, src)
    if case == 'nested folder':
        os.makedirs(src / 'train' / 'cat' / 'deeper')
        shutil.copy(folder / 'train' / 'cat' / '00.JPEG', src / 'train' / 'cat' / 'deeper' / 'x.JPEG')
    elif case == 'symlink to itself':
        os.symlink('loop.jpg', src / 'train' / 'dog' / 'loop.jpg')
    else:
        shutil.copy(folder / 'train' / 'cat' / '00.JPEG', os.path.join(os.fsencode(src / 'train' / 'cat'), b'bad\xff\xfe.jpg'))
    message = prepare('imagefolder', '--input', src, '--out_dir', tmp_path / 'data', '--image_size', 8, '--num_proc', 1)
    if words is None:
        assert message is None and D.load_meta(tmp_path / 'data')['train_size'] == 22  # 21 images and the odd name
        return
    assert message.startswith('prepare_data.py: error: ') and '\n' not in message, message
    assert all(w in message for w in words), message
    assert not (tmp_path / 'data').exists()
