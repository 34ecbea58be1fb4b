"""What only a CUDA GPU can show: compiled bf16 training and its resume (the ViT with every augmentation and the
EMA too), float16 with a GradScaler, the fused optimizers under it, pinned streamed batches, a steady iteration
without a host sync, the MFU figure, bench.py on the GPU, NCCL torchrun compiled. Every test here is marked `cuda`
and skips without a GPU. On a GPU machine: python -m pytest -q -m cuda"""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import data as D
import devices
import images
from optim import SGDW
from test_bench import bench, table
from test_data import folder, prepared  # noqa: F401 (fixtures)
from test_train import (ENV, LM, N, REPO, arg, assert_same_weights, load_ckpt, read_log, text_data, train,  # noqa: F401
                        train_losses, val_losses)

pytestmark = pytest.mark.cuda
GPU = dict(device='cuda', dtype='bfloat16')


def test_compiled_bf16_training_learns_and_resumes(text_data, tmp_path):
    """N steps, then N resumed, against 2N straight. CUDA kernels (the embedding's backward among them) are not
    bitwise deterministic, so the two agree to bf16 rounding rather than exactly."""
    cfg = dict(LM['adamw'], **GPU, compile=True, eval_interval=N)
    train(tmp_path / 'straight', text_data, max_iters=2 * N, timeout=900, **cfg)
    train(tmp_path / 'resumed', text_data, max_iters=N, timeout=900, **cfg)
    train(tmp_path / 'resumed', text_data, '--init_from=resume', max_iters=2 * N, timeout=900, **cfg)
    a, b = read_log(tmp_path / 'straight'), read_log(tmp_path / 'resumed')
    assert [i for i, _ in train_losses(b)] == list(range(1, 2 * N + 1))
    np.testing.assert_allclose([l for _, l in train_losses(b)], [l for _, l in train_losses(a)], rtol=2e-2)
    assert val_losses(a)[-1][1] < 0.7 * val_losses(a)[0][1]
    assert_same_weights(load_ckpt(tmp_path / 'straight')['model'], load_ckpt(tmp_path / 'resumed')['model'], atol=2e-2)


@pytest.mark.parametrize('name', ['msgdw', 'adamw'])
def test_fused_optimizers_skip_the_inf_step_of_a_float16_gradscaler(name):
    p = nn.Parameter(torch.ones(4, 4, device='cuda'))
    opt = (SGDW([p], lr=0.5, momentum=0.9, weight_decay=0.1, fused=True) if name == 'msgdw'
           else torch.optim.AdamW([p], lr=0.5, weight_decay=0.1, fused=True))
    scaler = torch.amp.GradScaler('cuda', init_scale=4.0)
    for grad in (float('inf'), 1.0):
        with torch.autocast('cuda', dtype=torch.float16):
            loss = (p * grad).sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if grad == float('inf'):
            assert scaler.get_scale() == 2.0 and torch.equal(p.detach(), torch.ones_like(p))  # skipped, decay too
    assert torch.isfinite(p).all() and (p < 1).all()  # the finite step: decay and a step down the gradient


def test_streamed_batches_are_pinned_and_equal_the_in_memory_ones(prepared):
    cfg = dict(image_size=12, crop='rrc', mixup=0.8)
    memory = images.ImageData(str(prepared), D.load_meta(prepared), 'cuda', 4, **cfg)
    stream = images.ImageData(str(prepared), D.load_meta(prepared), 'cuda', 4, stream=True, data_workers=2, **cfg)
    assert stream.stream.pin
    wait = stream.read('train', torch.arange(4))
    assert wait().is_cuda
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for _ in range(2):
        for (xa, ya), (xb, yb) in zip(memory.get_batches('train', 2, slice(None), g1),
                                      stream.get_batches('train', 2, slice(None), g2), strict=True):
            torch.testing.assert_close(xa, xb)
            torch.testing.assert_close(ya, yb)


def test_mfu_is_logged(text_data, tmp_path):
    train(tmp_path, text_data, max_iters=4, eval_interval=4, compile=False, **GPU)
    mfus = [r['mfu'] for r in read_log(tmp_path) if 'loss' in r]
    if devices.peak_flops('cuda') is None:
        pytest.skip(f"{torch.cuda.get_device_name()} is not in devices.PEAK_FLOPS")
    assert len(mfus) == 4 and all(0 < m < 1 for m in mfus)


def test_bench_measures_the_step_and_the_host_work_it_hides():
    out = bench('config/dnt_gpt2.py', device='cuda', dtype='bfloat16')
    assert table(out)['peak memory MiB'][0] > 0
    assert re.search(r"^host: .* for dnt\): hidden: \d+%$", out, re.M), out


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_nccl_matches_one_process(text_data, tmp_path):
    cfg = dict(gradient_accumulation_steps=4, batch_size=4, max_iters=3, eval_interval=3, learning_rate=1,
               device='cuda', dtype='float32')
    train(tmp_path / 'single', text_data, **cfg)
    ddp = train(tmp_path / 'ddp', text_data, torchrun=True, **cfg)
    assert '2 process(es), 2 micro-steps' in ddp.stdout
    np.testing.assert_allclose([l for _, l in train_losses(read_log(tmp_path / 'ddp'))],
                               [l for _, l in train_losses(read_log(tmp_path / 'single'))], rtol=1e-4)


EVERY_AUGMENTATION = dict(image_size=12, crop='rrc', mixup=0.8, cutmix=1.0, three_augment=True, color_jitter=0.3,
                          random_erasing=0.5, label_smoothing=0.1, drop_path=0.2, ema_decay=0.9, patch_size=4,
                          batch_size=8, gradient_accumulation_steps=2)


def test_vit_with_every_augmentation_and_ema_compiled_bf16_resumes(prepared, tmp_path):
    """N iterations, then N resumed, against 2N straight, EMA included. Some CUDA backward kernels (the patch
    convolution's) are not bitwise deterministic, so the runs agree to bf16 rounding rather than exactly."""
    cfg = dict(LM['adamw'], **GPU, **EVERY_AUGMENTATION, compile=True, eval_interval=N)
    train(tmp_path / 'straight', prepared, max_iters=2 * N, timeout=900, **cfg)
    train(tmp_path / 'resumed', prepared, max_iters=N, timeout=900, **cfg)
    train(tmp_path / 'resumed', prepared, '--init_from=resume', max_iters=2 * N, timeout=900, **cfg)
    a, b = read_log(tmp_path / 'straight'), read_log(tmp_path / 'resumed')
    assert [i for i, _ in train_losses(b)] == list(range(1, 2 * N + 1))
    np.testing.assert_allclose([l for _, l in train_losses(b)], [l for _, l in train_losses(a)], rtol=2e-2)
    sa, sb = load_ckpt(tmp_path / 'straight'), load_ckpt(tmp_path / 'resumed')
    assert_same_weights(sa['model'], sb['model'], atol=2e-2)
    assert_same_weights(sa['ema'], sb['ema'], atol=2e-2)


def test_float16_with_a_gradscaler_trains(text_data, tmp_path):
    train(tmp_path, text_data, max_iters=2 * N, eval_interval=2 * N, **dict(LM['adamw'], device='cuda', dtype='float16'))
    losses = [l for _, l in train_losses(read_log(tmp_path))]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert load_ckpt(tmp_path)['scaler']['scale'] > 0  # the GradScaler's state, saved for resume


SYNC_CHECK = '''
import runpy, sys, torch
import checkpoint
first, last = int(sys.argv.pop(1)), int(sys.argv.pop(1))
original, calls = checkpoint.StopOnSignals.__call__, [0]
def each_iteration(self):  # called once an iteration, after the update
    calls[0] += 1
    torch.cuda.set_sync_debug_mode('error' if first <= calls[0] < last else 'default')
    return original(self)
checkpoint.StopOnSignals.__call__ = each_iteration
sys.argv[0] = 'train.py'
runpy.run_path('train.py', run_name='__main__')
'''


@pytest.mark.parametrize('kind', ['text', 'image'])
def test_a_steady_iteration_never_waits_for_the_device(text_data, prepared, tmp_path, kind):
    """Iterations 5 to 10 of 12 (no log, no eval) under torch.cuda.set_sync_debug_mode('error'): any host sync
    (an .item(), a blocking copy, a read of a device tensor) raises."""
    cfg = dict(LM['adamw'], **GPU, compile=True, max_iters=12, eval_interval=12, log_interval=12,
               out_dir=str(tmp_path), data_dir=str(text_data if kind == 'text' else prepared),
               **(EVERY_AUGMENTATION if kind == 'image' else {}))
    r = subprocess.run([sys.executable, '-c', SYNC_CHECK, '4', '11', 'train.py', *(arg(k, v) for k, v in cfg.items())],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert load_ckpt(tmp_path)['iter_num'] == 12


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_nccl_compiled_with_ema(text_data, tmp_path):
    cfg = dict(gradient_accumulation_steps=4, batch_size=4, max_iters=6, eval_interval=3, learning_rate=1,
               device='cuda', dtype='bfloat16', compile=True, ema_decay=0.5)
    ddp = train(tmp_path, text_data, torchrun=True, timeout=900, **cfg)
    assert '2 process(es), 2 micro-steps' in ddp.stdout and load_ckpt(tmp_path)['iter_num'] == 6
    first = next(r for r in read_log(tmp_path) if r.get('iter') == 0 and 'val_loss' in r)
    assert first['ema_val_loss'] == first['val_loss']  # the EMA starts from the weights every process holds
