"""Tests for train.py (and configurator.py): tiny end-to-end runs as subprocesses on the CPU.

Every dataset is written here into tmp dirs by prepare_data.py's CLI (--input), so the real
loading code runs too. Runs are shared between tests through module-scoped fixtures.
Run: python -m pytest -q tests/test_train.py --durations=10
"""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoint import model_weights
from configurator import ConfigError, configure, defaults_of, overrides_from

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}  # tiny tensors, shared CPUs
TEXT = "the quick brown fox jumps over the lazy dog.\n" * 200  # repetitive: learnable in a few steps
# a 1-layer DNT-GPT; every run passes --device=cpu --compile=False --dtype=float32
TINY = dict(device='cpu', compile=False, dtype='float32', n_layer=1, n_head=2, n_embd=32, block_size=16,
            batch_size=8, gradient_accumulation_steps=1, eval_iters=2, log_interval=1, warmup_iters=2,
            lr_decay_iters=20, grad_clip=1.0)
N = 10  # iterations per half of a resume test; also its eval_interval
LM = {  # per optimizer: learning rate and dropout; learning_rate=1 (an int) checks int-for-float end to end
    'msgdw': dict(opt='msgdw', learning_rate=1, min_lr=0.1, dropout=0.1),
    'adamw': dict(opt='adamw', learning_rate=1e-2, min_lr=1e-3, dropout=0.0),
    'muon': dict(opt='muon', learning_rate=1e-2, min_lr=1e-3, dropout=0.0),
}
CKPT_KEYS = {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config', 'rng', 'meta'}


def arg(key, value):
    # strings as Python literals (paths are not bare words), everything else as its repr
    return f'--{key}={value!r}'


def train(out_dir, data_dir, *extra, torchrun=False, check=True, timeout=300, env=ENV, **overrides):
    """Run train.py with TINY + overrides (+ extra raw args); returns the CompletedProcess."""
    cfg = {**TINY, 'out_dir': str(out_dir), 'data_dir': str(data_dir), **overrides}
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2'] if torchrun else [sys.executable]
    r = subprocess.run([*launcher, 'train.py', *(arg(k, v) for k, v in cfg.items()), *extra],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def resume(out_dir, *extra, check=True):
    """Resume the run in out_dir giving only where it runs (and `extra`): the rest comes from its checkpoint."""
    r = subprocess.run([sys.executable, 'train.py', '--init_from=resume', arg('out_dir', str(out_dir)), '--device=cpu',
                        '--dtype=float32', '--compile=False', *extra], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def prepare(*args):
    r = subprocess.run([sys.executable, 'prepare_data.py', *map(str, args)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def load_ckpt(out_dir):
    return torch.load(Path(out_dir) / 'ckpt.pt', map_location='cpu', weights_only=True)


def read_log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / 'log.jsonl').read_text().splitlines()]


def train_losses(log):
    return [(r['iter'], r['loss']) for r in log if 'loss' in r]


def val_losses(log):
    return [(r['iter'], r['val_loss']) for r in log if 'val_loss' in r]


def assert_same_weights(a, b, rtol=0.0, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f'{k}: {m}')


def assert_clean_error(r, *words):
    """Non-zero exit, a message naming every word, no traceback."""
    assert r.returncode != 0
    assert 'Traceback' not in r.stderr, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


# ----------------------------------------------------------------------------------------
# data and shared runs

@pytest.fixture(scope='module')
def text_data(tmp_path_factory):
    d = tmp_path_factory.mktemp('text')
    (d / 'input.txt').write_text(TEXT)
    prepare('shakespeare_char', '--input', d / 'input.txt', '--out_dir', d / 'data')
    return d / 'data'


@pytest.fixture(scope='module')
def image_data(tmp_path_factory):
    """8x8 gray images, 2 classes: a bright top half or a bright bottom half, plus noise."""
    d, rng = tmp_path_factory.mktemp('image'), np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 2, n)
        x = rng.integers(0, 60, (n, 8, 8))
        for i in range(n):
            x[i, 4 * y[i]:4 * y[i] + 4] += 150
        return x.astype(np.uint8), y

    (xt, yt), (xv, yv) = make(256), make(64)
    np.savez(d / 'img.npz', x_train=xt, y_train=yt, x_test=xv, y_test=yv, class_names=np.array(['top', 'bottom']))
    prepare('npz', '--input', d / 'img.npz', '--out_dir', d / 'data')
    return d / 'data'


@pytest.fixture(scope='module')
def lm_runs(tmp_path_factory, text_data):
    """Per optimizer, made once: 2N steps straight; N steps (kept as `half`) then resumed to 2N, giving only
    max_iters (the checkpoint's config differs from train.py's defaults in model, data, batch and lr)."""
    cache = {}

    def get(opt):
        if opt not in cache:
            d = tmp_path_factory.mktemp(f'lm_{opt}')
            cfg = dict(LM[opt], eval_interval=N)
            train(d / 'straight', text_data, max_iters=2 * N, **cfg)
            train(d / 'resumed', text_data, max_iters=N, **cfg)
            shutil.copytree(d / 'resumed', d / 'half')  # a good checkpoint at iter N, for other tests to copy
            resume(d / 'resumed', f'--max_iters={2 * N}')
            cache[opt] = d
        return cache[opt]

    return get


def good_run_copy(lm_runs, dest):
    """A copy of an out_dir holding a good checkpoint at iter N (msgdw)."""
    shutil.copytree(lm_runs('msgdw') / 'half', dest)
    return dest


# ----------------------------------------------------------------------------------------
# end to end: outputs, learning, checkpoint contents

@pytest.mark.parametrize('opt', LM)
def test_lm_run_learns_and_writes_outputs(lm_runs, text_data, opt):
    out = lm_runs(opt) / 'straight'
    assert {p.name for p in out.iterdir()} >= {'ckpt.pt', 'log.jsonl', 'config.json'}
    log = read_log(out)
    losses, vals = train_losses(log), val_losses(log)
    assert [i for i, _ in losses] == list(range(1, 2 * N + 1))  # log_interval=1
    assert [i for i, _ in vals] == [0, N, 2 * N]  # eval at multiples of eval_interval and at max_iters
    assert losses[-1][1] < 0.7 * losses[0][1], losses
    assert vals[-1][1] < 0.7 * vals[0][1], vals

    ckpt = load_ckpt(out)  # weights_only=True: no pickled objects
    assert CKPT_KEYS <= ckpt.keys()
    assert not any('_orig_mod.' in k for k in ckpt['model'])
    assert ckpt['iter_num'] == 2 * N and ckpt['model_type'] == 'text'
    assert ckpt['best_val_loss'] == pytest.approx(min(v for _, v in vals))
    assert ckpt['model_args']['n_layer'] == 1 and ckpt['model_args']['vocab_size'] == len(set(TEXT))
    assert ckpt['model_args']['qk_norm'] is True  # preset 'dnt' resolved into the switches
    assert ckpt['meta'] == json.loads((text_data / 'meta.json').read_text())  # sample.py decodes with it
    config = json.loads((out / 'config.json').read_text())
    assert config == ckpt['config'] and config['opt'] == opt and config['max_iters'] == 2 * N
    assert type(config['learning_rate']) is float and config['learning_rate'] == LM[opt]['learning_rate']
    assert {'data', 'cpu', 'world_size'} <= ckpt['rng'].keys() and ckpt['rng']['world_size'] == 1


def test_the_run_prints_only_the_keys_off_their_default(text_data, tmp_path):
    r = train(tmp_path, text_data, max_iters=1, eval_interval=1, momentum=0.9, weight_decay=0.5)
    line = next(l for l in r.stdout.splitlines() if l.startswith('config, where not the default'))
    printed = json.loads(line.split(': ', 1)[1])
    config, defaults = json.loads((tmp_path / 'config.json').read_text()), defaults_of('train.py')
    assert printed == {k: v for k, v in config.items() if v != defaults[k]}
    assert printed['weight_decay'] == 0.5 and 'momentum' not in printed  # given at its default: not printed
    assert config['momentum'] == 0.9 and config.keys() == defaults.keys()  # config.json holds every key
    assert r.stdout.index(line) < r.stdout.index('step 0')


@pytest.fixture(scope='module')
def image_run(tmp_path_factory, image_data):
    """A tiny ViT trained for 30 iterations on image_data (AdamW, no label smoothing)."""
    out = tmp_path_factory.mktemp('image_run') / 'out'
    train(out, image_data, opt='adamw', learning_rate=3e-3, min_lr=3e-4, batch_size=16, patch_size=4,
          crop_padding=1, max_iters=30, eval_interval=15, lr_decay_iters=30)
    return out


def test_image_run_learns(image_run):
    tmp_path = image_run
    assert {p.name for p in tmp_path.iterdir()} >= {'ckpt.pt', 'log.jsonl', 'config.json'}
    log = read_log(tmp_path)
    vals = [(r['iter'], r['val_loss'], r['val_acc']) for r in log if 'val_loss' in r]
    assert [v[0] for v in vals] == [0, 15, 30]
    assert vals[-1][1] < 0.7 * vals[0][1] and vals[-1][2] >= 0.9, vals
    losses = train_losses(log)
    assert np.mean([l for _, l in losses[-5:]]) < np.mean([l for _, l in losses[:5]]), losses
    ckpt = load_ckpt(tmp_path)
    assert CKPT_KEYS <= ckpt.keys() and ckpt['model_type'] == 'image' and ckpt['iter_num'] == 30
    assert (ckpt['model_args']['image_size'], ckpt['model_args']['in_chans'], ckpt['model_args']['num_classes']) == (8, 1, 2)
    assert not any('_orig_mod.' in k for k in ckpt['model'])


# ----------------------------------------------------------------------------------------
# what one training step does, seen from outside: the lr it used, the update, the loss, the statistics

def schedule(it, lr, min_lr, warmup, decay):
    """Linear warmup from lr / (warmup + 1) over `warmup` steps, cosine to min_lr at `decay`, then min_lr."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it >= decay:
        return min_lr
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (it - warmup) / (decay - warmup))) / 2


def test_lr_follows_the_schedule(text_data, tmp_path):
    lr, min_lr, warmup, decay = 0.5, 0.05, 4, 12
    train(tmp_path, text_data, learning_rate=lr, min_lr=min_lr, warmup_iters=warmup, lr_decay_iters=decay,
          max_iters=16, eval_interval=8)
    log = read_log(tmp_path)
    steps = [(r['iter'] - 1, r['lr']) for r in log if 'loss' in r]  # the line after step i has iter i + 1
    evals = [(r['iter'], r['lr']) for r in log if 'val_loss' in r]
    assert [i for i, _ in steps] == list(range(16)) and [i for i, _ in evals] == [0, 8, 16]
    for it, logged in steps + evals:
        assert logged == pytest.approx(schedule(it, lr, min_lr, warmup, decay), rel=1e-9, abs=0), it
    # and the optimizer ran at that lr: the checkpoint, saved after the eval at 16, holds min_lr
    assert {g['lr'] for g in load_ckpt(tmp_path)['optimizer']['param_groups']} == {min_lr}


def one_plain_step(lm_runs, out, *extra):
    """Resume the msgdw run at iter N for one step of plain SGD (lr 1, no momentum, decay or schedule);
    the weights before and after it. Each weight then moves by minus its (clipped) gradient."""
    good_run_copy(lm_runs, out)
    before = load_ckpt(out)['model']
    resume(out, f'--max_iters={N + 1}', '--learning_rate=1.0', '--momentum=0.0', '--weight_decay=0.0',
           '--decay_lr=False', *extra)
    after = load_ckpt(out)
    assert after['iter_num'] == N + 1
    return before, after['model']


def update_norm(before, after):
    return math.sqrt(sum(((before[k] - after[k]).double() ** 2).sum().item() for k in before if k != 'lm_head.weight'))


def test_grad_clip_bounds_the_update(lm_runs, tmp_path):
    clipped = update_norm(*one_plain_step(lm_runs, tmp_path / 'clip', '--grad_clip=0.001'))
    assert clipped == pytest.approx(0.001, rel=1e-3)  # lr x the clipped gradient's norm
    unclipped = update_norm(*one_plain_step(lm_runs, tmp_path / 'off', '--grad_clip=0.0'))
    assert unclipped > 0.01  # the gradient's own norm: clipping at 0.001 did bind


def test_grad_stats_describe_the_gradient_of_their_step(lm_runs, tmp_path):
    """The logged statistics of |g| equal those of the gradient the step applied (read off the update)."""
    out = tmp_path / 'out'
    before, after = one_plain_step(lm_runs, out, '--grad_clip=0.0', '--grad_stats_interval=1')
    stats = [r['grad_stats'] for r in read_log(out) if 'grad_stats' in r]
    assert len(stats) == 1
    tensors, total = stats[0]['tensors'], 0
    assert set(tensors) == {k for k, v in before.items() if v.dim() >= 2 and k != 'lm_head.weight'}
    for name, logged in tensors.items():
        g = (before[name] - after[name]).flatten()
        a = g[g != 0].abs().sort().values
        total += a.numel()
        quantile = lambda q: a[min(int(q * a.numel()), a.numel() - 1)].item()
        for key, value in dict(median=quantile(0.5), p99=quantile(0.99), p999=quantile(0.999), max=a[-1].item()).items():
            assert logged[key] == pytest.approx(value, rel=1e-3), (name, key)
        c = g[g != 0] - g[g != 0].mean()
        assert logged['kurtosis'] == pytest.approx(((c ** 4).mean() / (c ** 2).mean() ** 2).item(), rel=1e-2), name
    assert sum(stats[0]['hist']['all']) == total  # every nonzero entry in one bin


def test_label_smoothing_reaches_the_image_loss(image_run, tmp_path):
    """One step from the trained ViT with and without smoothing, same weights and batch: the smoothed loss is
    (1 - eps) CE + eps mean_k(-log p_k), above the plain one by at least eps (log K - CE)."""
    losses = {}
    for eps in (0.0, 0.3):
        shutil.copytree(image_run, tmp_path / str(eps))
        resume(tmp_path / str(eps), '--max_iters=31', f'--label_smoothing={eps}')
        losses[eps] = train_losses(read_log(tmp_path / str(eps)))[-1]
    (i0, plain), (i1, smoothed) = losses[0.0], losses[0.3]
    assert i0 == i1 == 31 and plain < math.log(2) - 0.1  # a confident model: smoothing must show
    assert smoothed - plain >= 0.3 * (math.log(2) - plain) - 1e-6, losses

def test_ema_is_its_closed_form_and_resumes_exactly(text_data, tmp_path):
    """ema_1 = w_1, ema_k = d ema_(k-1) + (1 - d) w_k over the weights w_k after step k (runs of 1, 2, 3 steps
    are the same run cut short); resumed at 2, the EMA continues exactly; at iter 0 it is the initial model."""
    d, cfg = 0.6, dict(LM['msgdw'], dropout=0.0, drop_path=0.3, eval_interval=1)
    weights = []
    for k in (1, 2, 3):
        train(tmp_path / f'w{k}', text_data, max_iters=k, **cfg)
        weights.append(load_ckpt(tmp_path / f'w{k}')['model'])
    train(tmp_path / 'ema', text_data, max_iters=2, ema_decay=d, **cfg)
    resume(tmp_path / 'ema', '--max_iters=3')
    train(tmp_path / 'straight', text_data, max_iters=3, ema_decay=d, **cfg)
    resumed, straight = load_ckpt(tmp_path / 'ema'), load_ckpt(tmp_path / 'straight')
    assert_same_weights(straight['model'], weights[2], atol=0)  # the EMA does not change training
    expected = weights[0]
    for w in weights[1:]:
        expected = {k: d * expected[k] + (1 - d) * w[k] for k in w}
    assert_same_weights(model_weights(straight), expected, atol=1e-6)
    assert straight['ema']['n_averaged'] == 3
    assert_same_weights(resumed['ema'], straight['ema'], atol=0)
    log = read_log(tmp_path / 'straight')
    evals = [r for r in log if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 1, 2, 3]
    assert evals[0]['ema_val_loss'] == evals[0]['val_loss'] and evals[1]['ema_val_loss'] == evals[1]['val_loss']
    assert evals[3]['ema_val_loss'] != evals[3]['val_loss']
    assert [r for r in read_log(tmp_path / 'ema') if 'val_loss' in r] == evals

# ----------------------------------------------------------------------------------------
# exact resume, DDP, compile

@pytest.mark.parametrize('opt', LM)  # msgdw runs with dropout 0.1: its RNG must be restored too
def test_resume_is_exact(lm_runs, opt):
    d = lm_runs(opt)
    a, b = load_ckpt(d / 'straight'), load_ckpt(d / 'resumed')
    assert a['iter_num'] == b['iter_num'] == 2 * N
    assert_same_weights(a['model'], b['model'])
    states = lambda sd: [st for o in (sd.values() if opt == 'muon' else [sd]) for st in o['state'].values()]
    for sa, sb in zip(states(a['optimizer']), states(b['optimizer']), strict=True):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)
    la, lb = read_log(d / 'straight'), read_log(d / 'resumed')
    assert train_losses(la) == train_losses(lb)  # the resumed log continues the first half's, loss for loss
    ca, cb = (json.loads((d / run / 'config.json').read_text()) for run in ('straight', 'resumed'))
    invocation = dict(out_dir='', init_from='')
    assert {**ca, **invocation} == {**cb, **invocation}  # the stored run's config, with max_iters as given
    assert [r['resume'] for r in lb if 'resume' in r] == [{'max_iters': {'checkpoint': N, 'now': 2 * N}}]
    assert val_losses(la)[-1] == val_losses(lb)[-1]
    assert a['best_val_loss'] == b['best_val_loss']



def test_resume_is_exact_when_logging_every_few_iterations(text_data, tmp_path):
    """The loop reads the loss (a sync with the device) only every log_interval iterations and draws each
    iteration's batches before the update of the one before: resume still continues exactly."""
    cfg = dict(LM['msgdw'], log_interval=4, eval_interval=6)
    train(tmp_path / 'straight', text_data, max_iters=12, **cfg)
    train(tmp_path / 'resumed', text_data, max_iters=6, **cfg)
    resume(tmp_path / 'resumed', '--max_iters=12')
    la, lb = read_log(tmp_path / 'straight'), read_log(tmp_path / 'resumed')
    assert [i for i, _ in train_losses(la)] == [4, 8, 12] and train_losses(la) == train_losses(lb)
    assert val_losses(la) == val_losses(lb)
    assert_same_weights(load_ckpt(tmp_path / 'straight')['model'], load_ckpt(tmp_path / 'resumed')['model'], atol=0)


def test_a_signal_mid_run_resumes_bit_for_bit_on_text_that_is_not_repetitive(tmp_path):
    """What docs/training.md claims for this project's CPUs: text from a random source (no period to learn),
    evals every 4 iterations, SIGTERM mid-run, then resume: the log and weights of the straight run, exactly."""
    rng = np.random.default_rng(0)
    words = [''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), rng.integers(1, 9))) for _ in range(300)]
    (tmp_path / 'input.txt').write_text(' '.join(rng.choice(words, 6000)) + '\n')
    prepare('shakespeare_char', '--input', tmp_path / 'input.txt', '--out_dir', tmp_path / 'data')
    cfg = dict(LM['msgdw'], eval_interval=4, lr_decay_iters=100000)
    code, _, stderr = run_until_signal(tmp_path / 'stopped', tmp_path / 'data', 5, signal.SIGTERM, **cfg)
    assert code == 0, stderr
    stopped_at = load_ckpt(tmp_path / 'stopped')['iter_num']
    max_iters = 4 * (stopped_at // 4 + 3)
    resume(tmp_path / 'stopped', f'--max_iters={max_iters}')
    train(tmp_path / 'straight', tmp_path / 'data', max_iters=max_iters, **cfg)
    a, b = read_log(tmp_path / 'straight'), read_log(tmp_path / 'stopped')
    assert train_losses(a) == train_losses(b) and val_losses(a) == val_losses(b)
    assert_same_weights(load_ckpt(tmp_path / 'straight')['model'], load_ckpt(tmp_path / 'stopped')['model'], atol=0)

def test_torchrun_matches_single_process(text_data, tmp_path):
    # two micro-steps per process: the gradients must be synced on the last one, after both are summed; the EMA
    # is built from the weights DDP gave every process (rank 0's), not from each process's own init
    cfg = dict(gradient_accumulation_steps=4, batch_size=4, max_iters=3, eval_interval=3, learning_rate=1, ema_decay=0.5)
    single = train(tmp_path / 'single', text_data, **cfg)
    ddp = train(tmp_path / 'ddp', text_data, torchrun=True, **cfg)
    assert '2 process(es), 2 micro-steps' in ddp.stdout and '1 process(es), 4 micro-steps' in single.stdout
    assert ddp.stdout.count('saved checkpoint') == 1  # only rank 0 logs and saves
    ls, ld = read_log(tmp_path / 'single'), read_log(tmp_path / 'ddp')
    assert [i for i, _ in train_losses(ld)] == [1, 2, 3]
    np.testing.assert_allclose([l for _, l in train_losses(ld)], [l for _, l in train_losses(ls)], rtol=1e-5)
    np.testing.assert_allclose(val_losses(ld)[-1][1], val_losses(ls)[-1][1], rtol=1e-5)
    cs, cd = load_ckpt(tmp_path / 'single'), load_ckpt(tmp_path / 'ddp')
    assert cd['iter_num'] == 3 and cd['rng']['world_size'] == 2 and len(cd['rng']['cpu']) == 2
    assert_same_weights(cd['model'], cs['model'], rtol=1e-5, atol=1e-6)
    assert_same_weights(model_weights(cd), model_weights(cs), rtol=1e-5, atol=1e-6)
    first = next(r for r in ld if r.get('iter') == 0 and 'val_loss' in r)
    assert first['ema_val_loss'] == first['val_loss']


def test_sigterm_under_torchrun_saves_within_two_iterations(text_data, tmp_path):
    """The processes agree on a stop one iteration after the signal, not at the next log_interval (here never)."""
    cfg = {**TINY, **LM['msgdw'], 'out_dir': str(tmp_path), 'data_dir': str(text_data), 'max_iters': 100000,
           'lr_decay_iters': 100000, 'eval_interval': 1, 'log_interval': 100000, 'gradient_accumulation_steps': 2}
    p = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
                          *(arg(k, v) for k, v in cfg.items())], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline, wait = time.time() + 180, 3 + np.random.default_rng().integers(8)  # a random iteration past 3
        while not (tmp_path / 'log.jsonl').exists() or len(val_losses(read_whole_lines(tmp_path))) < wait:
            assert p.poll() is None and time.time() < deadline, "the run ended or made no progress"
            time.sleep(0.02)
        seen = val_losses(read_whole_lines(tmp_path))[-1][0]  # the run is at this iteration or just past it
        p.send_signal(signal.SIGTERM)
        _, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    stopped = load_ckpt(tmp_path)['iter_num']
    assert seen <= stopped <= seen + 3, (seen, stopped, stderr[-2000:])  # the signal's iteration, + 1 to agree, + 1 seen late
    iters = [r['iter'] for r in read_whole_lines(tmp_path) if 'val_loss' in r]
    assert iters == list(range(stopped)) and not load_ckpt(tmp_path)['evaluated']  # its eval runs on resume


def read_whole_lines(out_dir):
    """log.jsonl of a running process: its whole lines."""
    text = (Path(out_dir) / 'log.jsonl').read_text()
    return [json.loads(line) for line in text[:text.rfind('\n') + 1].splitlines()]


def test_torchrun_reports_a_config_error_once(text_data, tmp_path):
    """Every process finds the error; rank 0 alone prints it (torchrun then adds its own report of the exit)."""
    r = train(tmp_path / 'out', text_data, torchrun=True, check=False, batch_size=0, max_iters=2)
    assert r.returncode != 0
    assert r.stderr.count('train.py: error: batch_size must be at least 1, got 0') == 1, r.stderr
    assert not (tmp_path / 'out').exists()

def test_compile_runs(text_data, tmp_path):
    # inductor on the CPU: slow the first time (a minute or two), quick once its cache is warm
    train(tmp_path, text_data, compile=True, n_embd=16, block_size=8, batch_size=4, eval_iters=1,
          max_iters=2, eval_interval=100, timeout=600)
    ckpt = load_ckpt(tmp_path)
    assert ckpt['iter_num'] == 2 and 'lm_head.weight' in ckpt['model']
    assert not any('_orig_mod.' in k for k in ckpt['model'])  # the raw model's keys, not the compiled wrapper's
    assert len(train_losses(read_log(tmp_path))) == 2



def test_compiled_vit_has_one_graph_per_mode(image_data, tmp_path):
    """64 val images in batches of 24: the last one padded, so that evaluation keeps one static shape. Two graphs
    (train, eval) and no recompile for a batch size (which would also make the training graph symbolic)."""
    r = train(tmp_path, image_data, compile=True, n_embd=16, batch_size=24, patch_size=4, max_iters=2, eval_interval=1,
              opt='adamw', learning_rate=1e-3, min_lr=1e-4, timeout=600, env={**ENV, 'TORCH_LOGS': 'recompiles'})
    recompiles = r.stderr.count('Recompiling function')
    assert recompiles == 1 and 'grad_mode' in r.stderr and 'mismatch' not in r.stderr, r.stderr[-3000:]
    assert [v['iter'] for v in read_log(tmp_path) if 'val_acc' in v] == [0, 1, 2]

# ----------------------------------------------------------------------------------------
# failures: clear messages, no tracebacks, no bad checkpoints

@pytest.mark.parametrize('bad, words', [
    ('--learning_rat=1', ["unknown config key 'learning_rat'", 'did you mean learning_rate']),
    ('--compile=1', ['compile must be a bool']),
])
def test_bad_config_arg(text_data, tmp_path, bad, words):
    r = train(tmp_path, text_data, bad, check=False)
    assert_clean_error(r, bad.split('=')[0], *words)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not tmp_path.joinpath('ckpt.pt').exists()


def test_min_lr_above_learning_rate(text_data, tmp_path):
    # sweeping learning_rate alone under the default min_lr would make the cosine schedule rise
    r = train(tmp_path, text_data, '--learning_rate=1e-3', check=False)
    assert_clean_error(r, 'train.py: error: ', 'min_lr (0.1) is above learning_rate (0.001)')


def test_missing_data_dir(tmp_path):
    r = train(tmp_path / 'out', tmp_path / 'nope', check=False)
    assert_clean_error(r, 'train.py: error: ', 'prepare_data.py', str(tmp_path / 'nope'))
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_resume_without_checkpoint(text_data, tmp_path):
    r = train(tmp_path, text_data, '--init_from=resume', check=False)
    assert_clean_error(r, 'train.py: error: ', 'no checkpoint', str(tmp_path / 'ckpt.pt'))


def snapshot(*dirs):
    """Every path under dirs with its bytes (None for a directory): equal snapshots, nothing changed."""
    return {str(p): p.read_bytes() if p.is_file() else None for d in dirs for p in sorted(Path(d).rglob('*'))}


def assert_one_line_error(r, *words):
    assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('train.py: error: '), r.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.fixture(scope='module')
def bad_data(tmp_path_factory, text_data):
    """Broken copies of text_data, by name."""
    root, out = tmp_path_factory.mktemp('bad_data'), {}
    metas = {'meta_audio': '{"kind": "audio"}', 'meta_list': '[1, 2]', 'meta_no_vocab': '{"kind": "text", "tokenizer": "char"}',
             'meta_image_shape': '{"kind": "image", "shape": [32, 32], "num_classes": 2, "mean": [0.5], "std": [0.5]}',
             'meta_bad_json': '{"kind": "text", ', 'meta_itos': None}
    for name in ('short_train', 'bad_ids', 'empty', 'odd_bytes', *metas):
        d = out[name] = Path(shutil.copytree(text_data, root / name))
        train_ids = np.fromfile(d / 'train.bin', dtype=np.uint16)
        if name == 'meta_itos':  # a vocab_size its characters disagree with
            (d / 'meta.json').write_text(json.dumps({**json.loads((d / 'meta.json').read_text()), 'vocab_size': 1000}))
        elif name in metas:
            (d / 'meta.json').write_text(metas[name])
        elif name == 'odd_bytes':
            (d / 'train.bin').write_bytes((d / 'train.bin').read_bytes() + b'\x00')
        elif name == 'short_train':
            train_ids[:10].tofile(d / 'train.bin')
        elif name == 'bad_ids':
            train_ids[100] = 60000
            train_ids.tofile(d / 'train.bin')
        else:
            for split in ('train', 'val'):
                (d / f'{split}.bin').write_bytes(b'')
    return out


class CallsSystem:
    def __reduce__(self):
        return os.system, ('true',)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
SCRATCH = ['--init_from=scratch', '--overwrite=True']  # a check that came too late would wipe the run
RESUME = ['--init_from=resume']
BAD_INPUTS = [  # (case, arguments, words of the message); every case runs on a copy of a run with a checkpoint
    ('batch_size=0', SCRATCH + ['--batch_size=0'], ['batch_size must be at least 1, got 0']),
    ('batch_size=-1', SCRATCH + ['--batch_size=-1'], ['batch_size must be at least 1, got -1']),
    ('gradient_accumulation_steps=0', SCRATCH + ['--gradient_accumulation_steps=0'], ['gradient_accumulation_steps must be at least 1']),
    ('eval_interval=0', SCRATCH + ['--eval_interval=0'], ['eval_interval must be at least 1']),
    ('eval_iters=0', SCRATCH + ['--eval_iters=0'], ['eval_iters must be at least 1']),
    ('log_interval=0', SCRATCH + ['--log_interval=0'], ['log_interval must be at least 1']),
    ('n_head=0', SCRATCH + ['--n_head=0'], ['n_head must be at least 1']),
    ('device=cuda', SCRATCH + ['--device=cuda'], ['no CUDA device', '--device=cpu']),
    ('device=gpu', SCRATCH + ['--device=gpu'], ["unknown device 'gpu'"]),
    ('dtype=float64', SCRATCH + ['--dtype=float64'], ["unknown dtype 'float64'"]),
    ('dtype=fp16', SCRATCH + ['--dtype=fp16'], ["unknown dtype 'fp16'"]),
    ('config file with a syntax error', SCRATCH + ['BAD_CONFIG'], ['does not run', 'SyntaxError']),
    ('block_size longer than the data', SCRATCH + ['--block_size=100000'], ['.bin holds', 'block_size 100000 needs at least 100001']),
    ('train.bin too short', SCRATCH + ['DATA=short_train'], ['train.bin holds 10 tokens', 'block_size 16 needs at least 17']),
    ('token ids outside the vocabulary', SCRATCH + ['DATA=bad_ids'], ['token id 60000', 'outside the vocabulary']),
    ('empty dataset', SCRATCH + ['DATA=empty'], ['train.bin holds 0 tokens']),
    ('unknown init_from', ['--init_from=gpt3'], ["unknown init_from 'gpt3'"]),
    ('scratch over a checkpoint', ['--init_from=scratch'], ['holds an earlier run', '--init_from=resume', '--overwrite=True']),
    ('out_dir is a file', SCRATCH + ['OUT=config.json'], ['exists and is not a directory']),
    ('out_dir under a file', SCRATCH + ['OUT=config.json/run'], ['config.json is a file, not a directory']),
    ('log.jsonl a directory', RESUME + ['DIR=log.jsonl'], ['log.jsonl is not a regular file']),
    ('resume naming another dataset', RESUME + ['--dataset=cifar10'], ['was trained on the data in', '--dataset=cifar10 names other data']),
    ('resume naming another data_dir', RESUME + ['DATA=short_train'], ['was trained on the data in', 'short_train names other data']),
    ('EMA that does not fit its model', RESUME + ['CKPT=bad_ema', '--ema_decay=0.5'], ['its EMA of the weights does not fit']),
    ('checkpoint calling os.system', RESUME + ['CKPT=system'], ['was refused', 'could run code']),
    ('min_lr above learning_rate', SCRATCH + ['--learning_rate=1e-3'], ['min_lr (0.1) is above learning_rate (0.001)']),
    ('checkpoint corrupted', RESUME + ['CKPT=corrupted'], ['not a readable checkpoint']),
    ('checkpoint truncated', RESUME + ['CKPT=truncated'], ['not a readable checkpoint']),
    ('checkpoint empty', RESUME + ['CKPT=empty'], ['not a readable checkpoint']),
    ('resume past max_iters', RESUME + [f'--max_iters={N - 1}'], [f'is at iter {N}, past max_iters ({N - 1})']),
    ('resume with another model', RESUME + ['--n_layer=2'], ['n_layer=1 there, 2 asked']),
    # numbers that are not
    ('learning_rate=1e999', SCRATCH + ['--learning_rate=1e999'], ['learning_rate must be a finite number, got inf']),
    ('nan in a config file', SCRATCH + ['CONFIG=learning_rate = float("nan")'], ['learning_rate must be a finite number']),
    ('grad_clip nan', SCRATCH + ['CONFIG=grad_clip = float("nan")'], ['grad_clip must be a finite number']),
    ('min_lr nan', SCRATCH + ['CONFIG=min_lr = float("nan")'], ['min_lr must be a finite number']),
    ('weight_decay nan on resume', RESUME + ['CONFIG=weight_decay = float("nan")'], ['weight_decay must be a finite number']),
    ('seed 2**64', SCRATCH + ['--seed=18446744073709551616'], ['seed must be in 0..']),
    ('a model larger than memory', SCRATCH + ['--n_embd=10000000', '--n_head=1'], ['GiB of float32 weights', 'memory']),
    ('out_dir empty', SCRATCH + ['--out_dir='], ['out_dir is empty']),
    # meta.json and token files
    ('meta.json of kind audio', SCRATCH + ['DATA=meta_audio'], ['meta.json does not describe a dataset', "not 'text' or 'image'"]),
    ('meta.json a list', SCRATCH + ['DATA=meta_list'], ['meta.json does not describe a dataset']),
    ('meta.json without vocab_size', SCRATCH + ['DATA=meta_no_vocab'], ['needs a vocab_size']),
    ('meta.json image shape of 2', SCRATCH + ['DATA=meta_image_shape'], ['needs shape [H, W, C]']),
    ('meta.json not JSON', SCRATCH + ['DATA=meta_bad_json'], ['meta.json is not readable JSON']),
    ('meta.json vocab_size against itos', SCRATCH + ['DATA=meta_itos'], ['its itos has', 'its vocab_size is 1000']),
    ('train.bin of an odd byte count', SCRATCH + ['DATA=odd_bytes'], ['an odd number', 'not uint16']),
    ('checkpoint with code in it', RESUME + ['CKPT=malicious'], ['was refused', 'could run code']),
    ('checkpoint lacking a weight', RESUME + ['CKPT=missing_weight'],
     ['weights do not fit', 'Missing key(s) in state_dict: "transformer.h.0.mlp.c_fc.weight"']),
    # the regularizers
    ('ema_decay=1', SCRATCH + ['--ema_decay=1.0'], ['ema_decay must be in [0, 1), got 1.0']),
    ('drop_path=1', SCRATCH + ['--drop_path=1.0'], ['drop_path must be in [0, 1), got 1.0']),
    ('random_erasing=-0.1', SCRATCH + ['--random_erasing=-0.1'], ['random_erasing must be in [0, 1], got -0.1']),
    ('random_erasing=1.5', SCRATCH + ['--random_erasing=1.5'], ['random_erasing must be in [0, 1], got 1.5']),
    ('color_jitter=1', SCRATCH + ['--color_jitter=1.0'], ['color_jitter must be in [0, 1), got 1.0']),
]


@pytest.mark.parametrize('case, args, words', [pytest.param(*c, id=c[0], marks=NO_CUDA if c[0] == 'device=cuda' else ())
                                                for c in BAD_INPUTS])
def test_bad_input_changes_nothing(lm_runs, text_data, bad_data, tmp_path, case, args, words):
    out, data = good_run_copy(lm_runs, tmp_path / 'out'), text_data
    argv = []
    for a in args:
        kind, _, value = a.partition('=')
        if kind == 'DATA':
            data = bad_data[value]
        elif kind == 'OUT':
            out = out / value
        elif kind == 'DIR':
            (out / value).unlink()
            (out / value).mkdir()
        elif kind == 'CKPT':
            ckpt = tmp_path / 'out' / 'ckpt.pt'
            good = ckpt.read_bytes()
            if value == 'malicious':  # a pickle that names a function: loading it would call code
                torch.save({**torch.load(ckpt, weights_only=True), 'hook': print}, ckpt)
            elif value == 'missing_weight':
                stored = torch.load(ckpt, weights_only=True)
                del stored['model']['transformer.h.0.mlp.c_fc.weight']
                torch.save(stored, ckpt)
            elif value == 'bad_ema':  # AveragedModel's keys, one weight of the wrong shape
                stored = torch.load(ckpt, weights_only=True)
                stored['ema'] = {f'module.{k}': v[:1] if k.endswith('c_fc.weight') else v for k, v in stored['model'].items()}
                stored['ema']['n_averaged'] = torch.tensor(N)
                torch.save(stored, ckpt)
            elif value == 'system':  # a pickle that calls os.system when loaded
                torch.save({**torch.load(ckpt, weights_only=True), 'hook': CallsSystem()}, ckpt)
            else:
                ckpt.write_bytes({'corrupted': b'\x00' * 64 + good[64:], 'truncated': good[:len(good) // 2], 'empty': b''}[value])
        elif kind in ('BAD_CONFIG', 'CONFIG'):
            (tmp_path / 'config.py').write_text(value if kind == 'CONFIG' else "batch_size = (8\n")
            argv.append(str(tmp_path / 'config.py'))
        else:
            argv.append(a)
    before = snapshot(tmp_path / 'out', data)
    r = train(out, data, *argv, check=False, max_iters=2 * N, eval_interval=N, **LM['msgdw'])
    assert_one_line_error(r, *words)
    assert snapshot(tmp_path / 'out', data) == before


@pytest.mark.parametrize('old, new', [('msgdw', 'adamw'), ('adamw', 'muon'), ('muon', 'msgdw')])
def test_resume_with_another_optimizer_is_refused(lm_runs, tmp_path, old, new):
    out = Path(shutil.copytree(lm_runs(old) / 'half', tmp_path / 'out'))
    before = snapshot(out)
    r = resume(out, f'--opt={new}', f'--max_iters={N + 1}', check=False)
    assert_one_line_error(r, f"opt='{old}'", f"--opt={old}", '--reset_optimizer=True')
    assert snapshot(out) == before


def test_a_plain_resume_restores_the_runs_compile_and_dtype(lm_runs, tmp_path):
    """`--init_from=resume --out_dir=...` and nothing else: the eager float32 run goes on eager and float32 (this
    machine's defaults would compile it), and ends as the run that was never stopped, bit for bit."""
    d = lm_runs('msgdw')
    out = Path(shutil.copytree(d / 'half', tmp_path / 'out'))
    r = subprocess.run([sys.executable, 'train.py', '--init_from=resume', arg('out_dir', str(out)), f'--max_iters={2 * N}'],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'compiling' not in r.stdout and 'rounds differently' not in r.stdout
    stored = json.loads((out / 'config.json').read_text())
    assert (stored['compile'], stored['dtype'], stored['device']) == (False, 'float32', 'cpu')
    assert train_losses(read_log(out)) == train_losses(read_log(d / 'straight'))
    assert_same_weights(load_ckpt(out)['model'], load_ckpt(d / 'straight')['model'], atol=0)


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory, text_data):
    d = tmp_path_factory.mktemp('ema') / 'out'
    train(d, text_data, max_iters=2, eval_interval=2, ema_decay=0.5, **LM['msgdw'])
    return d


@pytest.mark.parametrize('case, note', [
    ('resume with another dtype', "resume: dtype 'bfloat16' (the stored run's: 'float32'): this rounds differently"),
    ('resume with ema_decay=0', "resume: ema_decay=0: the checkpoint's EMA of the weights is dropped at the next save"),
    ('image keys on text', "mixup, random_erasing: set, but text data does not use them; this run ignores them"),
    ('text keys on images', "block_size: set, but image data does not use it; this run ignores it"),
])
def test_what_a_run_would_not_show_is_noted(ema_run, text_data, image_data, tmp_path, case, note):
    out = Path(shutil.copytree(ema_run, tmp_path / 'out'))
    if case == 'resume with another dtype':
        r = subprocess.run([sys.executable, 'train.py', '--init_from=resume', arg('out_dir', str(out)), '--max_iters=3',
                            '--dtype=bfloat16'], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    elif case == 'resume with ema_decay=0':
        r = resume(out, '--max_iters=4', '--ema_decay=0.0', '--eval_interval=1')
        assert load_ckpt(out)['ema'] is None
    elif case == 'image keys on text':
        r = train(tmp_path / 'new', text_data, max_iters=1, mixup=0.5, random_erasing=0.1, **LM['msgdw'])
    else:
        r = train(tmp_path / 'new', image_data, max_iters=1, patch_size=4, block_size=64, **LM['adamw'])
    assert r.returncode == 0, r.stderr[-2000:]
    assert note in r.stdout, r.stdout[-3000:]


def test_random_erasing_of_one_erases_every_image(image_data, tmp_path):
    train(tmp_path, image_data, max_iters=1, patch_size=4, random_erasing=1.0, **LM['adamw'])  # a probability of 1
    assert json.loads((tmp_path / 'config.json').read_text())['random_erasing'] == 1.0


@pytest.mark.parametrize('nesterov', [True, False])
def test_nesterov_reaches_the_optimizer(lm_runs, tmp_path, nesterov):
    out = Path(shutil.copytree(lm_runs('msgdw') / 'half', tmp_path / 'out'))
    resume(out, f'--max_iters={N + 1}', f'--nesterov={nesterov}')
    groups = load_ckpt(out)['optimizer']['param_groups']
    assert [g['nesterov'] for g in groups] == [nesterov, nesterov]


def test_a_log_cut_midline_is_cut_to_its_last_whole_line_on_resume(lm_runs, tmp_path):
    out = Path(shutil.copytree(lm_runs('msgdw') / 'half', tmp_path / 'out'))
    whole = (out / 'log.jsonl').read_text()
    (out / 'log.jsonl').write_text(whole[:-20])  # a write cut by a full disk or a crash: its last line half there
    resume(out, f'--max_iters={N + 2}')
    lines = (out / 'log.jsonl').read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert lines[:-4] == whole.splitlines()[:-1] and records[-4]['resume'] and records[-1]['iter'] == N + 2


@pytest.mark.parametrize('second', ['resume', 'scratch with --overwrite=True'])
def test_a_second_train_py_on_a_running_out_dir_is_refused(text_data, tmp_path, second):
    """A run owns its out_dir: a second train.py there says which process has it, in one line, and changes
    nothing; the first run goes on and logs each iteration once."""
    out = tmp_path / 'out'
    cfg = {**TINY, **LM['msgdw'], 'out_dir': str(out), 'data_dir': str(text_data), 'max_iters': 100000,
           'eval_interval': 5, 'lr_decay_iters': 100000}
    first = subprocess.Popen([sys.executable, 'train.py', *(arg(k, v) for k, v in cfg.items())], cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / 'ckpt.pt').exists():
            assert first.poll() is None and time.time() < deadline, "the first run ended or made no progress"
            time.sleep(0.1)
        if second == 'resume':
            r = resume(out, '--max_iters=100000', check=False)
        else:
            r = train(out, text_data, '--overwrite=True', check=False, max_iters=3, **LM['msgdw'])
        assert_one_line_error(r, f'{out} is in use by process {first.pid} (train.py)')
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    iters = [i for i, _ in train_losses(read_log(out))]
    assert iters == list(range(1, len(iters) + 1)) and load_ckpt(out)['iter_num'] == iters[-1]


@pytest.mark.parametrize('delay', [0.3, 0.8])
def test_ctrl_c_before_the_loop_is_one_line(text_data, tmp_path, delay):
    """SIGINT while train.py imports torch (before it takes SIGINT itself, to save and stop): one line, nothing written."""
    p = subprocess.Popen([sys.executable, 'train.py', *(arg(k, v) for k, v in {**TINY, 'out_dir': str(tmp_path / 'out'),
                          'data_dir': str(text_data)}.items())],
                         cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 1 and stderr.strip().splitlines() == [
        'train.py: error: interrupted (Ctrl-C) before training began'], stderr[-3000:]
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('new', ['adamw', 'muon'])
def test_resume_with_a_fresh_optimizer_state(lm_runs, tmp_path, new):
    out = Path(shutil.copytree(lm_runs('msgdw') / 'half', tmp_path / 'out'))
    r = resume(out, f'--opt={new}', '--reset_optimizer=True', '--learning_rate=1e-2', '--min_lr=1e-3', f'--max_iters={N + 2}')
    assert f'a fresh {new} optimizer state' in r.stdout and f"resume: opt = '{new}' (the checkpoint's run had 'msgdw')" in r.stdout
    ckpt = load_ckpt(out)
    assert ckpt['iter_num'] == N + 2 and ckpt['config']['opt'] == new
    assert new == 'adamw' or ckpt['optimizer'].keys() == {'muon', 'adamw'}
    adamw = lambda ckpt: ckpt['optimizer']['adamw'] if new == 'muon' else ckpt['optimizer']  # Muon's AdamW half
    adamw_steps = lambda ckpt: {int(st['step']) for st in adamw(ckpt)['state'].values()}
    assert adamw_steps(ckpt) == {2}  # AdamW's step counters began at the resume
    resume(out, f'--max_iters={N + 3}')  # reset_optimizer is not taken from the checkpoint: this one continues the state
    assert adamw_steps(load_ckpt(out)) == {3}


def test_a_checkpoint_whose_config_names_the_optimizer_optimizer_resumes(lm_runs, tmp_path):
    """Cut runs saved while the config key was 'optimizer' (reproduce.py resumes them) continue as 'opt'."""
    out = Path(shutil.copytree(lm_runs('adamw') / 'half', tmp_path / 'out'))
    ckpt = load_ckpt(out)
    ckpt['config']['optimizer'] = ckpt['config'].pop('opt')
    torch.save(ckpt, out / 'ckpt.pt')
    r = resume(out, f'--max_iters={N + 1}')
    assert "resume: opt" not in r.stdout and 'a fresh' not in r.stdout
    assert load_ckpt(out)['config']['opt'] == 'adamw' and load_ckpt(out)['iter_num'] == N + 1


@pytest.mark.parametrize('opt', LM)
def test_resume_optimizer_hyperparameters_given_anew_take_effect(lm_runs, tmp_path, opt):
    out = Path(shutil.copytree(lm_runs(opt) / 'half', tmp_path / 'out'))
    r = resume(out, '--weight_decay=0.5', f'--max_iters={N + 1}')
    assert "resume: weight_decay = 0.5 (the checkpoint's run had 0.0001)" in r.stdout
    ckpt = load_ckpt(out)
    groups = [g for sd in (ckpt['optimizer'].values() if opt == 'muon' else [ckpt['optimizer']]) for g in sd['param_groups']]
    key = 'decoupled_weight_decay' if opt == 'msgdw' else 'weight_decay'
    decays = [g[key] for g in groups]
    assert decays == ([0.5, 0.5, 0.0] if opt == 'muon' else [0.5, 0.0])  # the matrices' groups; vectors never decay
    assert json.loads((out / 'config.json').read_text())['weight_decay'] == 0.5 == ckpt['config']['weight_decay']
    assert [r['resume'] for r in read_log(out) if 'resume' in r] == [{'weight_decay': {'checkpoint': 1e-4, 'now': 0.5},
                                                                     'max_iters': {'checkpoint': N, 'now': N + 1}}]


def test_scratch_overwrite_replaces_the_run(lm_runs, text_data, tmp_path):
    out = good_run_copy(lm_runs, tmp_path / 'out')
    # a replacement that diverges at once: the old run is gone, and the message names no checkpoint of it
    r = train(out, text_data, '--overwrite=True', check=False, max_iters=1000, **{**LM['msgdw'], 'learning_rate': 1e30, 'grad_clip': 0.0})
    assert_one_line_error(r, 'loss is', 'Lower learning_rate')
    assert 'checkpoint' not in r.stderr and not (out / 'ckpt.pt').exists()
    train(out, text_data, '--overwrite=True', max_iters=2, eval_interval=100, **LM['msgdw'])
    assert load_ckpt(out)['iter_num'] == 2
    assert [r['iter'] for r in read_log(out)] == [0, 1, 2, 2]  # eval 0, steps 1 and 2, eval 2: nothing of the old run


def test_eval_only_writes_nothing(lm_runs, text_data, tmp_path):
    out = good_run_copy(lm_runs, tmp_path / 'out')
    before = snapshot(out)
    r = resume(out, '--eval_only=True')
    val = [v for i, v in val_losses(read_log(out)) if i == N][0]
    assert f"step {N}: train_loss" in r.stdout and f"val_loss {val:.4f}" in r.stdout  # the checkpoint's eval, again
    r = train(out, text_data, '--eval_only=True', check=False, **LM['msgdw'])  # scratch next to a checkpoint
    assert_one_line_error(r, 'holds a run', '--init_from=resume --eval_only=True')  # not a fresh model's eval
    assert snapshot(out) == before


def test_resume_with_other_model_config(lm_runs, text_data, tmp_path):
    out = good_run_copy(lm_runs, tmp_path / 'out')
    before = (out / 'ckpt.pt').read_bytes()
    r = train(out, text_data, '--init_from=resume', check=False, n_layer=2, max_iters=2 * N, **LM['msgdw'])
    assert_clean_error(r, 'train.py: error: ', 'n_layer=1 there, 2 asked')
    assert (out / 'ckpt.pt').read_bytes() == before


def test_nan_loss_stops_without_saving(lm_runs, text_data, tmp_path):
    out = good_run_copy(lm_runs, tmp_path / 'out')
    good = load_ckpt(out)
    # eval_interval=N: the resume step N re-evaluates (finite), the next eval at 2N is never reached
    r = train(out, text_data, '--init_from=resume', check=False, max_iters=1000, eval_interval=N,
              **{**LM['msgdw'], 'learning_rate': 1e30, 'grad_clip': 0.0})
    assert_clean_error(r, 'train.py: error: ', 'loss is', 'learning_rate')
    assert 'loss is nan' in r.stderr or 'loss is inf' in r.stderr, r.stderr
    after = load_ckpt(out)
    assert after['iter_num'] == N
    assert_same_weights(after['model'], good['model'], atol=0)
    assert all(torch.isfinite(v).all() for v in after['model'].values())
    assert not list(out.glob('*.tmp'))


# train.py run with torch.save replaced: the checkpoint is serialized, then written half and the disk is
# full (OSError ENOSPC), or written whole and the process is killed before anything else can run
CRASHING_SAVE = '''
import errno, io, os, runpy, signal, sys, torch
real_save, mode = torch.save, sys.argv.pop(1)
def save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    with (open(f, 'wb') if isinstance(f, (str, os.PathLike)) else f) as out:
        out.write(data[:len(data) // 2] if mode == 'full' else data)
        out.flush()
    if mode == 'full':
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
sys.argv[0] = 'train.py'
runpy.run_path('train.py', run_name='__main__')
'''


@pytest.mark.parametrize('mode', ['full', 'kill'])
def test_interrupted_checkpoint_write_keeps_the_last_one(lm_runs, tmp_path, mode):
    out = good_run_copy(lm_runs, tmp_path / 'out')
    before = (out / 'ckpt.pt').read_bytes()
    r = subprocess.run([sys.executable, '-c', CRASHING_SAVE, mode, '--init_from=resume', arg('out_dir', str(out)),
                        '--device=cpu', '--compile=False', f'--max_iters={N + 2}', '--eval_interval=1'],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == (1 if mode == 'full' else -signal.SIGKILL), r.stderr
    assert (out / 'ckpt.pt').read_bytes() == before  # iter N's checkpoint, untouched
    if mode == 'full':  # a full disk: said in one line, and the partial file is gone
        assert_clean_error(r, 'train.py: error: ', 'No space left on device')
        assert len(r.stderr.strip().splitlines()) == 1 and not list(out.glob('*.tmp'))
    resume(out, f'--max_iters={N + 2}')  # the run goes on from iter N
    assert load_ckpt(out)['iter_num'] == N + 2 and not list(out.glob('*.tmp'))

# ----------------------------------------------------------------------------------------
# disk faults, on a small filesystem of their own (conftest.py's small_fs)

def test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_tmp(lm_runs, small_fs):
    half = lm_runs('msgdw') / 'half'
    used = sum(p.stat().st_size for p in half.iterdir())
    out = Path(shutil.copytree(half, small_fs(used + (half / 'ckpt.pt').stat().st_size // 2) / 'out'))
    before = snapshot(out)
    r = resume(out, f'--max_iters={N + 1}', check=False)
    assert_one_line_error(r, 'cannot save the checkpoint', 'bytes free there', 'still holds the last one')
    after = snapshot(out)
    assert not list(out.glob('*.tmp')) and after[str(out / 'ckpt.pt')] == before[str(out / 'ckpt.pt')]


@pytest.mark.parametrize('where', ['resume', 'new subdirectory'])
def test_a_read_only_disk_is_refused_before_anything(lm_runs, text_data, small_fs, where):
    fs = small_fs(1 << 20)
    out = Path(shutil.copytree(lm_runs('msgdw') / 'half', fs / 'out'))
    subprocess.run(['mount', '-o', 'remount,ro', str(fs)], check=True)
    before = snapshot(fs)
    if where == 'resume':
        r = resume(out, f'--max_iters={N + 2}', check=False)
    else:
        r = train(fs / 'new' / 'run', text_data, check=False, max_iters=2, **LM['msgdw'])
    assert_one_line_error(r, 'cannot write to', 'read-only')
    assert snapshot(fs) == before


def fill(fs):
    """Take every free byte of the filesystem fs."""
    with open(fs / 'filler', 'wb', buffering=0) as f:
        try:
            while True:
                f.write(b'\0' * 4096)
        except OSError:
            pass


def test_a_full_disk_at_the_start_of_a_run_leaves_no_config(text_data, small_fs):
    fs = small_fs(64 << 10)
    fill(fs)
    before = snapshot(fs)
    r = train(fs / 'out', text_data, check=False, max_iters=2, **LM['msgdw'])
    assert_one_line_error(r, 'cannot write', 'config.json', 'No space left on device')
    assert {p for p in snapshot(fs) if 'config' in p} == set() and not list(fs.rglob('*.tmp'))


def test_a_full_disk_while_logging_keeps_the_log_as_it_was(small_fs):
    import checkpoint
    fs = small_fs(64 << 10)
    log = fs / 'log.jsonl'
    checkpoint.append_log(str(log), dict(iter=0, loss=1.0), 0)
    fill(fs)
    before = log.read_bytes()
    with pytest.raises(ConfigError, match=r'cannot write .*log.jsonl at iter 7 \(No space left on device\)'):
        for _ in range(10000):  # the first line that needs a new page
            checkpoint.append_log(str(log), dict(iter=7, loss=1.0, pad='x' * 200), 7)
    lines = log.read_text().splitlines()
    assert log.read_bytes().startswith(before) and all(json.loads(line) for line in lines)  # whole lines only

def run_until_signal(out_dir, data_dir, n_losses, sig, **cfg):
    """Start a long run, send `sig` once its log has n_losses training losses; (returncode, stdout, stderr)."""
    cmd = [sys.executable, 'train.py', *(arg(k, v) for k, v in {**TINY, **cfg, 'out_dir': str(out_dir),
           'data_dir': str(data_dir), 'max_iters': 100000}.items())]
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / 'stdout', 'w') as stdout:
        p = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=stdout, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 120
            log = out_dir / 'log.jsonl'  # polled as text: a line may be half written
            while not log.exists() or log.read_text().count('"loss":') < n_losses:
                assert p.poll() is None and time.time() < deadline, "the run ended or made no progress"
                time.sleep(0.1)
            p.send_signal(sig)
            _, stderr = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return p.returncode, (out_dir / 'stdout').read_text(), stderr


def test_sigterm_saves_and_resumes_with_its_eval(text_data, tmp_path):
    cfg = dict(LM['msgdw'], eval_interval=100000, lr_decay_iters=100000)
    code, stdout, stderr = run_until_signal(tmp_path, text_data, 3, signal.SIGTERM, **cfg)
    assert code == 0, stderr
    assert 'stop requested by signal' in stdout
    last = train_losses(read_log(tmp_path))[-1][0]
    ckpt = load_ckpt(tmp_path)
    assert 3 <= ckpt['iter_num'] == last < 100000 and ckpt['evaluated'] is False
    # as if the signal came during the last step of a run to `last`: resuming runs the final eval it missed
    resume(tmp_path, f'--max_iters={last}')
    assert load_ckpt(tmp_path)['iter_num'] == last and load_ckpt(tmp_path)['evaluated'] is True
    resume(tmp_path, f'--max_iters={last + 2}')  # and resuming continues from there
    assert load_ckpt(tmp_path)['iter_num'] == last + 2
    log = read_log(tmp_path)
    assert [i for i, _ in train_losses(log)] == list(range(1, last + 3))  # each iteration once
    assert [i for i, _ in val_losses(log)] == [0, last, last + 2]


def test_sigkill_then_resume_logs_each_iteration_once(text_data, tmp_path):
    """Killed past its checkpoint: the resumed run cuts the log back to the checkpoint and logs the steps
    after it again, and the whole log is the one of a straight run to the same max_iters."""
    cfg = dict(LM['msgdw'], eval_interval=5)
    code, _, _ = run_until_signal(tmp_path / 'killed', text_data, 7, signal.SIGKILL, **cfg)
    assert code == -signal.SIGKILL
    killed_at = train_losses(read_log(tmp_path / 'killed'))[-1][0]
    assert 5 <= load_ckpt(tmp_path / 'killed')['iter_num'] <= killed_at  # almost always <: steps logged past the checkpoint
    # the kill lands wherever the poll saw the 7th loss (later on a busy machine): resume past it, whatever it was
    max_iters = max(2 * N, N * (killed_at // N + 1))
    resume(tmp_path / 'killed', f'--max_iters={max_iters}')
    train(tmp_path / 'straight', text_data, max_iters=max_iters, **cfg)
    log, straight = read_log(tmp_path / 'killed'), read_log(tmp_path / 'straight')
    assert train_losses(log) == train_losses(straight)  # iterations 1..max_iters, each once, loss for loss
    assert val_losses(log) == val_losses(straight)  # evals at 0, 5, 10, ..., max_iters, each once
    assert [i for i, _ in val_losses(log)] == list(range(0, max_iters + 1, 5))


@pytest.mark.cuda
def test_resume_on_cuda(text_data, tmp_path):
    """Resume on a GPU: the checkpoint's RNG states must come back as CPU tensors."""
    cfg = dict(LM['adamw'], device='cuda', eval_interval=2)
    train(tmp_path, text_data, max_iters=2, **cfg)
    train(tmp_path, text_data, '--init_from=resume', max_iters=4, **cfg)
    assert load_ckpt(tmp_path)['iter_num'] == 4


# ----------------------------------------------------------------------------------------
# configurator, directly

DEFAULTS = dict(learning_rate=1.0, max_iters=100, compile=True, dataset='openwebtext', input_norm=None)


def config_error(argv):
    with pytest.raises(ConfigError) as e:
        configure(DEFAULTS, argv)
    return str(e.value)


# ----------------------------------------------------------------------------------------
# nanoGPT's paths: its data format, fine-tuning GPT-2's weights

@pytest.fixture(scope='module')
def nanogpt_data(tmp_path_factory):
    """nanoGPT's format, as its prepare.py scripts write it: uint16 GPT-2 token ids, no meta.json."""
    d = tmp_path_factory.mktemp('nanogpt') / 'openwebtext'
    d.mkdir()
    cycle = np.random.default_rng(0).integers(0, 50257, 40).astype(np.uint16)  # a repeated sequence: learnable
    np.tile(cycle, 50).tofile(d / 'train.bin')
    np.tile(cycle, 10).tofile(d / 'val.bin')
    return d


@pytest.fixture(scope='module')
def gpt2_dir(tmp_path_factory):
    """A randomly initialised GPT2LMHeadModel, saved: it stands in for OpenAI's weights (no download)."""
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32))
    path = tmp_path_factory.mktemp('gpt2')
    hf.save_pretrained(path)
    return path, {k: v.t() if k.endswith(('c_attn.weight', 'c_proj.weight', 'c_fc.weight')) else v
                  for k, v in hf.state_dict().items()}  # in this model's layout


def test_nanogpt_data_without_meta(nanogpt_data, tmp_path):
    r = train(tmp_path, nanogpt_data, max_iters=2, eval_interval=2)
    assert f"{nanogpt_data} has train.bin and val.bin but no meta.json: read as nanoGPT's format" in r.stdout
    ckpt = load_ckpt(tmp_path)
    assert ckpt['model_args']['vocab_size'] == 50257
    assert ckpt['meta'] == {'kind': 'text', 'tokenizer': 'gpt2', 'vocab_size': 50257}  # what sample.py decodes with
    assert not (nanogpt_data / 'meta.json').exists()  # the data dir is only read


def test_finetune_gpt2_config(gpt2_dir, nanogpt_data, tmp_path):
    """config/finetune_shakespeare.py with the stand-in weights on nanoGPT-format data, on the CPU."""
    path, weights = gpt2_dir
    args = dict(init_from=str(path), data_dir=str(nanogpt_data), out_dir=str(tmp_path), device='cpu', dtype='float32',
                block_size=16, batch_size=4, gradient_accumulation_steps=1, max_iters=4, eval_interval=2, eval_iters=2,
                always_save_checkpoint=True)
    r = subprocess.run([sys.executable, 'train.py', 'config/finetune_shakespeare.py', *(arg(k, v) for k, v in args.items())],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert f"init_from={path}: GPT-2's weights, 1 layers" in r.stdout
    ckpt = load_ckpt(tmp_path)
    margs = ckpt['model_args']
    assert (margs['n_layer'], margs['n_embd'], margs['vocab_size'], margs['block_size']) == (1, 16, 50257, 16)  # cropped
    assert margs['bias'] and margs['preset'] == 'standard' and margs['dropout'] == 0.1 and ckpt['iter_num'] == 4
    assert ckpt['config']['bias'] is True and ckpt['config']['n_layer'] == 1  # the config records the model trained
    # 4 AdamW steps of 3e-5 from GPT-2's weights, not from a fresh init (whose weights differ by ~0.02)
    moved = max((ckpt['model'][k] - (v[:16] if k.endswith('wpe.weight') else v)).abs().max().item() for k, v in weights.items())
    assert 0 < moved < 1e-3
    # resuming the fine-tune rebuilds its model from the checkpoint's config, not GPT-2's weights again
    r = subprocess.run([sys.executable, 'train.py', 'config/finetune_shakespeare.py',
                        *(arg(k, v) for k, v in {**args, 'init_from': 'resume', 'max_iters': 6}.items())],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "GPT-2's weights" not in r.stdout and load_ckpt(tmp_path)['iter_num'] == 6


def test_gpt2_weights_refuse_dnt_and_char_data(gpt2_dir, nanogpt_data, text_data, tmp_path):
    path, _ = gpt2_dir
    r = train(tmp_path / 'a', nanogpt_data, f'--init_from={path}', check=False)  # TINY's preset: dnt
    assert_clean_error(r, "train.py: error: ", "standard preset only", "preset 'dnt'")
    r2 = train(tmp_path / 'b', text_data, f'--init_from={path}', '--preset=standard', check=False)
    assert_clean_error(r2, "GPT-2 BPE", str(text_data))
    for r in (r, r2):
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def test_configurator_overrides(tmp_path):
    f = tmp_path / 'cfg.py'
    f.write_text("import math\nmax_iters = 5\ndataset = 'shakespeare'\n_private = 1\ndef helper(): pass\n")
    assert configure(DEFAULTS, []) == DEFAULTS
    c = configure(DEFAULTS, [str(f)])  # modules, functions and _names are not config
    assert c == {**DEFAULTS, 'max_iters': 5, 'dataset': 'shakespeare'}
    c = configure(DEFAULTS, [str(f), '--max_iters=7', '--dataset=cifar10', "--input_norm=False", '--compile=False'])
    assert (c['max_iters'], c['dataset'], c['input_norm'], c['compile']) == (7, 'cifar10', False, False)
    assert configure(DEFAULTS, ['--dataset="a b"'])['dataset'] == 'a b'  # a literal string
    assert configure(DEFAULTS, ['--dataset=data/x-1'])['dataset'] == 'data/x-1'  # not a literal: stays a string
    # later arguments win, a file after an argument included
    assert configure(DEFAULTS, ['--max_iters=1', '--max_iters=2'])['max_iters'] == 2
    assert configure(DEFAULTS, ['--max_iters=1', str(f)])['max_iters'] == 5
    c = configure(DEFAULTS, ['--learning_rate=3'])  # an int for a float becomes a float
    assert type(c['learning_rate']) is float and c['learning_rate'] == 3.0
    assert DEFAULTS['max_iters'] == 100  # the defaults are not modified


def test_configurator_errors(tmp_path):
    msg = config_error(['--learning_rat=1'])
    assert "unknown config key 'learning_rat'" in msg and 'did you mean learning_rate' in msg
    assert 'did you mean' not in config_error(['--zzzzzz=1'])
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer'; did you mean opt or"):
        configure(defaults_of('train.py'), ['--optimizer=adamw'])
    msg = config_error(['--max_iters=abc'])
    assert 'max_iters must be a int' in msg and "'abc'" in msg
    assert 'compile must be a bool' in config_error(['--compile=1'])
    assert 'learning_rate must be a float' in config_error(['--learning_rate=True'])  # a bool is no number here
    assert 'max_iters must be a int' in config_error(['--max_iters=1.5'])
    assert 'expected --key=value' in config_error(['--max_iters'])
    assert 'cannot read config file' in config_error([str(tmp_path / 'missing.py')])
    f = tmp_path / 'bad.py'
    f.write_text("max_iter = 5\n")
    msg = config_error([str(f)])
    assert str(f) in msg and "'max_iter'" in msg and 'did you mean max_iters' in msg
    f.write_text("max_iters = (5\n")  # a config file is a program: one that does not run is a config error
    assert str(f) in config_error([str(f)]) and 'SyntaxError' in config_error([str(f)])
    f.write_text("max_iters = undefined_name\n")
    assert 'NameError' in config_error([str(f)])
