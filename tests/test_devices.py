"""Tests for devices.py and the scripts' device logic, with CUDA or MPS faked available (no GPU and no
Mac here): the devices accepted or refused in one line, the defaults chosen (dtype, compile, fused
kernels, pinned memory), RNG states across devices on resume, and the MFU peaks by card name."""
import inspect
import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import checkpoint
import checks
import devices
import sample
from configurator import ConfigError, defaults_of
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mps(monkeypatch):
    """A Mac with its GPU: MPS available, no CUDA."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: True)
    monkeypatch.setattr(torch.backends.mps, 'is_built', lambda: True)
    monkeypatch.setattr(torch.backends.mps, 'is_macos_or_newer', lambda major, minor: True)


@pytest.fixture
def cuda(monkeypatch):
    """A CUDA GPU with bf16."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)


def resolve(tmp_path, *argv):
    """train.py's config for argv (its defaults read now, under the fakes in force)."""
    return checks.resolve(defaults_of('train.py'), [f'--out_dir={tmp_path}', *argv])


# ----------------------------------------------------------------------------------------
# MPS


def test_mps_is_accepted_with_its_defaults(mps, tmp_path):
    assert devices.default_device() == 'mps'
    for device in ('mps', 'mps:0'):
        devices.check_device(device)
    assert devices.default_dtype('mps') == 'float32'
    assert not devices.fused_kernels('mps') and not devices.pin_memory('mps') and devices.peak_flops('mps') is None
    config, run = resolve(tmp_path)
    assert (config['device'], config['dtype'], config['compile']) == ('mps', 'float32', False)
    assert len(run.notes) == 1 and 'compile=False' in run.notes[0]
    config, run = resolve(tmp_path, '--compile=True', '--dtype=float16')  # given: taken as given
    assert (config['compile'], config['dtype'], run.notes) == (True, 'float16', [])
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=8))
    opt = model.configure_optimizers('msgdw', 0.1, 0.0, device_type='mps')
    assert not opt.defaults['fused']


FAKE_MPS = """
import runpy, sys, torch
torch.cuda.is_available = lambda: False
torch.backends.mps.is_available = lambda: True
sys.argv.pop(0)
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def test_sample_and_bench_take_mps(mps, tmp_path):
    with pytest.raises(SystemExit, match='no checkpoint'):  # past the device check, stopped at the missing checkpoint
        sample.main([f'--out_dir={tmp_path}', '--device=mps:0'])
    r = subprocess.run([sys.executable, '-c', FAKE_MPS, 'bench.py', '--device=mps', f'--loader={tmp_path}'], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and 'no dataset in' in r.stderr and 'device' not in r.stderr, r.stderr


@pytest.mark.parametrize('built, why', [(False, 'this torch is built without MPS'), (True, r'no Apple GPU \(MPS\)')])
def test_mps_refused_where_there_is_none(monkeypatch, built, why):
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_built', lambda: built)
    with pytest.raises(ConfigError, match=why) as e:
        devices.check_device('mps')
    assert '--device=cpu' in str(e.value) and '\n' not in str(e.value)


def test_mps_refuses_ddp_and_old_bf16(mps, monkeypatch, tmp_path):
    monkeypatch.setenv('RANK', '0')
    with pytest.raises(ConfigError, match='DDP runs on cuda'):
        resolve(tmp_path, '--device=mps')
    monkeypatch.delenv('RANK')
    monkeypatch.setattr(torch.backends.mps, 'is_macos_or_newer', lambda major, minor: False)
    with pytest.raises(ConfigError, match='needs macOS 14'):
        resolve(tmp_path, '--device=mps', '--dtype=bfloat16')


def test_unknown_device_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown device 'tpu'; use cpu, cuda, cuda:N or mps"):
        devices.check_device('tpu')


# ----------------------------------------------------------------------------------------
# the default dtype follows the device actually used


def test_dtype_follows_the_device(cuda, tmp_path):
    config, _ = resolve(tmp_path)
    assert (config['device'], config['dtype']) == ('cuda', 'bfloat16')
    config, _ = resolve(tmp_path, '--device=cpu')
    assert config['dtype'] == 'float32'


@pytest.mark.parametrize('native, dtype', [(True, 'bfloat16'), (False, 'float32')])
def test_bf16_only_on_cards_that_have_it(monkeypatch, tmp_path, native, dtype):
    """torch.cuda.is_bf16_supported() also counts the bf16 that torch emulates (V100, T4): no default there."""
    assert 'including_emulation' in inspect.signature(torch.cuda.is_bf16_supported).parameters  # torch's, not faked yet
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: native or including_emulation)
    assert devices.default_dtype('cuda:0') == dtype
    config, _ = resolve(tmp_path)
    assert (config['device'], config['dtype']) == ('cuda', dtype)


def test_sample_on_cpu_runs_in_float32_where_cuda_is(cuda, monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(sample, 'autocast', lambda device, dtype: asked.append((device, dtype)))
    with pytest.raises(SystemExit, match='no checkpoint'):  # stops after choosing, at the missing checkpoint
        sample.main([f'--out_dir={tmp_path}', '--device=cpu'])
    assert asked == [('cpu', 'float32')]


FAKE_CUDA = '''
import runpy, sys, torch
torch.cuda.is_available = lambda: True
torch.cuda.is_bf16_supported = lambda *a, **k: True
sys.argv.pop(0)
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def fake_cuda_run(script, *args):
    r = subprocess.run([sys.executable, '-c', FAKE_CUDA, script, *args], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_train_on_cpu_runs_in_float32_where_cuda_is(tmp_path):
    (tmp_path / 'input.txt').write_text("to be or not to be, that is the question.\n" * 20)
    subprocess.run([sys.executable, 'prepare_data.py', 'shakespeare_char', '--input', str(tmp_path / 'input.txt'),
                    '--out_dir', str(tmp_path / 'data')], cwd=REPO, check=True, capture_output=True)
    fake_cuda_run('train.py', '--device=cpu', '--compile=False', f'--data_dir={tmp_path / "data"}',
                  f'--out_dir={tmp_path / "out"}', '--n_layer=1', '--n_head=1', '--n_embd=16', '--block_size=8',
                  '--batch_size=2', '--gradient_accumulation_steps=1', '--max_iters=1', '--eval_iters=1')
    assert json.loads((tmp_path / 'out' / 'config.json').read_text())['dtype'] == 'float32'


def test_bench_on_cpu_runs_in_float32_where_cuda_is():
    out = fake_cuda_run('bench.py', '--device=cpu', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=32',
                        '--block_size=16', '--vocab_size=64', '--batch_size=2', '--warmup=1', '--iters=2')
    assert 'float32 on cpu' in out


# ----------------------------------------------------------------------------------------
# resume across devices: each RNG state restored where it exists, a note where it does not


def restore(stored, device, monkeypatch, capsys):
    """checkpoint.Run.restore of a tiny model's checkpoint `stored` on `device`; (device RNG states set, lines printed)."""
    set_states = []
    monkeypatch.setattr(checkpoint, 'set_rng_state', lambda device, state: set_states.append((device, state)))
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=8))
    optimizer = model.configure_optimizers('msgdw', 0.1, 0.0)
    config = dict(opt='msgdw', reset_optimizer=False, device=device, out_dir='out', seed=0)
    stored = dict(stored, model=model.state_dict(), model_args=asdict(model.config), optimizer=optimizer.state_dict(),
                  scaler={}, config=dict(opt='msgdw'), iter_num=3, best_val_loss=1.0)
    out = checkpoint.Run(config, stored).restore(model, optimizer, torch.amp.GradScaler('cpu', enabled=False), None)
    assert out == (3, 1.0, True)
    return set_states, capsys.readouterr().out.splitlines()


def test_a_cpu_checkpoint_resumes_on_cuda(monkeypatch, capsys):
    cpu_state = torch.get_rng_state()
    rng = dict(data=torch.Generator().get_state(), world_size=1, cpu=[cpu_state])
    set_states, lines = restore(dict(rng=rng), 'cuda', monkeypatch, capsys)
    assert set_states == [] and len(lines) == 1 and 'holds no cuda RNG state' in lines[0]
    assert torch.equal(torch.get_rng_state(), cpu_state)


def test_a_cuda_checkpoint_resumes_on_the_cpu_and_mps_on_mps(monkeypatch, capsys):
    device_state = torch.ByteTensor([1, 2, 3])
    for saved, now, expected in (('cuda', 'cpu', []), ('mps', 'mps', [('mps', device_state)])):
        rng = dict(data=torch.Generator().get_state(), world_size=1, cpu=[torch.get_rng_state()], **{saved: [device_state]})
        set_states, lines = restore(dict(rng=rng), now, monkeypatch, capsys)
        assert set_states == expected and lines == []


def test_rng_states_keep_the_devices_generator(monkeypatch):
    monkeypatch.setattr(torch.mps, 'get_rng_state', lambda: torch.ByteTensor([7]))
    rng = checkpoint.rng_states(torch.Generator().get_state(), 'mps', 1)
    assert rng['mps'] == [torch.ByteTensor([7])] and 'cuda' not in rng
    assert set(checkpoint.rng_states(torch.Generator().get_state(), 'cpu', 1)) == {'data', 'world_size', 'cpu'}


def test_cuda_n_becomes_the_current_device(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, 'set_device', current.append)
    devices.set_current('cuda:1')
    devices.set_current('cpu')
    assert current == ['cuda:1']


# ----------------------------------------------------------------------------------------
# MFU: the vendors' dense bf16 peaks, the most specific name first


@pytest.mark.parametrize('name, peak', [
    ('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12), ('NVIDIA H100 NVL', 835e12),
    ('NVIDIA H200', 989e12), ('NVIDIA H200 NVL', 835e12), ('NVIDIA GH200 480GB', 989e12), ('NVIDIA H800', 989e12),
    ('NVIDIA H800 PCIe', 756e12), ('NVIDIA A100-SXM4-40GB', 312e12), ('NVIDIA A100 80GB PCIe', 312e12),
    ('NVIDIA A10G', 70e12), ('NVIDIA A10', 125e12), ('NVIDIA L4', 121e12), ('NVIDIA L40S', 362e12),
    ('NVIDIA L40', 181e12), ('NVIDIA B200', 2250e12), ('NVIDIA GB200', 2500e12),
    ('NVIDIA RTX 6000 Ada Generation', 364e12), ('Tesla V100-SXM2-16GB', 125e12), ('Tesla V100-PCIE-32GB', 112e12),
    ('Tesla T4', 65e12),
])
def test_peak_flops_by_card_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: name)
    assert devices.peak_flops('cuda') == peak


def test_an_unknown_card_is_named_once(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'Some Future GPU')
    assert devices.peak_flops('cuda:0') is None and devices.peak_flops('cuda:0') is None
    err = capsys.readouterr().err
    assert err.count("'Some Future GPU'") == 1 and 'PEAK_FLOPS in devices.py' in err


def test_muon_refused_in_one_line_on_an_older_torch(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.optim, 'Muon', raising=False)  # torch before 2.9 has none
    with pytest.raises(ConfigError, match=r"opt='muon' needs torch 2\.9 or newer"):
        resolve(tmp_path, '--opt=muon', '--device=cpu')
