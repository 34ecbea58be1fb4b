"""Tests for bench.py: it runs as a subprocess on tiny models on the CPU, and its table parses."""
import json
import os
import re
import subprocess
import sys

import pytest

import model as M
from configurator import defaults_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, batch_size=2)
FAST = ['--warmup=1', '--iters=3', '--compile=False', '--device=cpu', '--dtype=float32']


def bench(*args, **overrides):
    """bench.py's stdout for args (a config first), tiny and fast, then overrides; one thread, as these CPUs are
    shared and the tensors tiny."""
    tiny = [f'--{k}={v}' for k, v in TINY.items()]
    result = subprocess.run([sys.executable, 'bench.py', *args, *tiny, *FAST, *(f'--{k}={v}' for k, v in overrides.items())],
                            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stderr
    return result.stdout


def table(out):
    """{row label: [cells]}; cells are split by two or more spaces, numbers lose their commas."""
    rows = {}
    for line in out.splitlines():
        label, *cells = re.split(r' {2,}', line.rstrip())  # the header's label is ''
        rows[label] = [float(c.replace(',', '')) if re.fullmatch(r'[\d,.]+', c) else c for c in cells]
    return rows


def test_accepts_every_train_key_with_train_defaults():
    train, bench_ = defaults_of('train.py'), defaults_of('bench.py')
    assert not set(train) - set(bench_), "train.py keys that bench.py refuses"
    differ = {k for k in train if bench_[k] != train[k]}
    assert differ == {'vocab_size', 'image_size'}  # 0, "the dataset's" / "as stored", has no dataset in bench.py


def test_compare_optimizers_from_a_train_config():
    rows = table(bench('config/dnt_gpt2.py', '--compare=opt=adamw,msgdw'))
    assert rows[''] == ['A', 'B', 'B/A']
    for label in ('step ms median', 'step ms min', 'optimizer ms median', 'tok/s'):
        a, b, ratio = rows[label]
        assert a > 0 and b > 0 and ratio == pytest.approx(b / a, rel=0.02), label  # of the unrounded values
    assert re.fullmatch(r'[\d.]+-[\d.]+', rows['step ms IQR'][0])
    assert rows['MFU %'] == rows['peak memory MiB'] == ['n/a', 'n/a']  # CPU
    (params, params_b, _), (adamw, msgdw, ratio) = rows['parameters'], rows['optimizer state bytes']
    assert params == params_b
    assert msgdw == 4 * params  # one float32 momentum per parameter
    # AdamW: two float32 moments per parameter, and a float32 step count per parameter tensor
    tensors = len(list(M.GPT(M.GPTConfig(preset='dnt', **{k: v for k, v in TINY.items() if k != 'batch_size'})).parameters()))
    assert adamw == 2 * msgdw + 4 * tensors
    assert ratio == round(msgdw / adamw, 4)


def test_vit():
    out = bench('--model=vit', '--image_size=8', '--patch_size=4', '--num_classes=10', '--opt=adamw')
    rows = table(out)
    assert out.startswith('bench: vit preset=dnt opt=adamw 1x32, 2 img per step')
    assert rows['step ms median'][0] > 0 and rows['img/s'][0] > 0
    assert len(rows['step ms median']) == 1  # one variant: no ratio


def test_profile_writes_a_chrome_trace(tmp_path):
    trace = tmp_path / 'trace.json'
    out = bench('--profile=True', f'--trace={trace}')
    assert 'Self CPU' in out and f'chrome trace written to {trace}' in out
    assert json.loads(trace.read_text())['traceEvents']



def test_host_time_of_an_iteration():
    out = bench('config/dnt_gpt2.py', '--host=True')
    assert re.fullmatch(r"host: [\d.]+ ms an iteration to draw and copy 40 micro-batches of 2 x 16 tokens to cpu "
                        r"\(median of 3\)\n", out), out
    assert 'host: ' in bench('config/dnt_gpt2.py')  # beside a GPT step's time


def test_cpu_n_is_the_cpu():
    """--device=cpu:0 is the CPU too: the host's work is not hidden behind the step there (this line once divided
    by the config key `host` on any device but the literal 'cpu', and crashed)."""
    out = bench('config/dnt_gpt2.py', device='cpu:0')
    assert 'float32 on cpu:0' in out
    assert re.search(r"^host: [\d.]+ ms an iteration .* \(about [\d,.]+ ms of forward and backward for dnt\): "
                     r"the host and the device are one CPU here, so none of it is hidden$", out, re.M), out


def test_bench_gpu_sh_runs_through_with_the_cpu_standing_in():
    """bench_gpu.sh's five runs end to end, on the CPU at tiny sizes: each takes its config and variants, and gets
    to its last line."""
    tiny = [f'--{k}={v}' for k, v in TINY.items()] + ['--warmup=1', '--iters=2', '--gradient_accumulation_steps=1']
    r = subprocess.run(['bash', 'bench_gpu.sh'], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable, 'NVIDIA_SMI': 'echo',
                            'BENCH_DEVICE_ARGS': '--device=cpu:0 --dtype=float32 --compile=False', 'BENCH_ARGS': ' '.join(tiny)})
    assert r.returncode == 0, r.stderr
    smi, *runs = r.stdout.split('\n== ')
    assert smi == '--query-gpu=name,memory.total,driver_version --format=csv,noheader'  # echo standing in for nvidia-smi
    variants = {  # each run's title: its variants' presets and optimizers, in the order bench.py prints them
        'config/gpt2.py': [('standard', 'adamw')],
        'config/dnt_gpt2.py': [('dnt', 'msgdw')],
        'config/dnt_gpt2_adamw.py': [('dnt', 'adamw')],
        'config/dnt_gpt2.py, opt=adamw,msgdw': [('dnt', 'adamw'), ('dnt', 'msgdw')],
        'standard + AdamW vs DNT + mSGDW': [('standard', 'adamw'), ('dnt', 'msgdw')],
    }
    assert [run.splitlines()[0] for run in runs] == list(variants)
    for run, cells in zip(runs, variants.values()):
        assert re.findall(r"^\w+(?: \(.*\))?: gpt preset=(\w+) opt=(\w+) 1x32, 32 tok per step, float32 on cpu:0, "
                          r"compile=False$", run, re.M) == cells, run
        assert len(table(run)['step ms median']) == (3 if len(cells) == 2 else 1)  # B/A beside two variants
        assert 'so none of it is hidden' in run.splitlines()[-1]
