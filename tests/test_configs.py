"""The paper's table as configs: every cell of it (a model and size, a preset and an optimizer) is one file in config/,
checked against the table, the learning rates and the GPT settings of PAPER.md. The models are built on the meta
device: their shapes and parameter counts, no memory."""
import glob
import itertools
import os

import pytest
import torch

from configurator import configure, defaults_of
from model import GPT, GPTConfig, ViT, ViTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the paper's table ("Results reported"): each row's config stem, model, size and data
ROWS = {
    'gpt2': ('gpt', 124e6, 'openwebtext'),
    'gpt2_large': ('gpt', 774e6, 'openwebtext'),
    'gpt2_1b4': ('gpt', 1.4e9, 'openwebtext'),
    'vit_large_imagenet': ('vit', 307e6, 'imagenet'),
    'vit_huge_imagenet': ('vit', 632e6, 'imagenet'),
}
CELLS = [('standard', 'adamw'), ('dnt', 'adamw'), ('standard', 'msgdw'), ('dnt', 'msgdw')]  # its columns
# the learning rates it gives ("Training settings that are known"): at GPT-2 124M and ViT-L, one per optimizer; it
# gives none at the other sizes, where the configs keep these
LR = {('gpt', 'msgdw'): 1.0, ('gpt', 'adamw'): 6e-4, ('vit', 'msgdw'): 0.5, ('vit', 'adamw'): 1e-3}
OPTIMIZER_KEYS = {'opt', 'learning_rate', 'min_lr', 'weight_decay', 'beta1', 'beta2', 'momentum'}
GPUS = 8  # the configs' torchrun --nproc_per_node=8


def config_name(row, preset, optimizer):
    """A cell's config: dnt_ for DNT, and the optimizer's name where it is not the preset's own (AdamW for the
    standard model, mSGDW for DNT): gpt2.py, dnt_gpt2.py, gpt2_msgdw.py, dnt_gpt2_adamw.py."""
    own = {'standard': 'adamw', 'dnt': 'msgdw'}[preset]
    return ('dnt_' if preset == 'dnt' else '') + row + ('' if optimizer == own else f'_{optimizer}')


PAPER = {config_name(row, preset, optimizer): (row, preset, optimizer) for row in ROWS for preset, optimizer in CELLS}


def load(path):
    """train.py's config after the file, as configurator.py gives it to train.py."""
    return configure(defaults_of('train.py'), [path])


def build(config, model):
    """The model a config trains, on the meta device; ImageNet's 3 channels and 1,000 classes come from its data."""
    ModelConfig, Model, data = (GPTConfig, GPT, {}) if model == 'gpt' else (ViTConfig, ViT, dict(in_chans=3, num_classes=1000))
    with torch.device('meta'):
        return Model(ModelConfig(**{k: v for k, v in config.items() if k in ModelConfig.__dataclass_fields__}, **data))


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'config', '*.py'))), ids=os.path.basename)
def test_every_config_loads(path):
    assert load(path)['out_dir'].startswith('out/')


def test_every_cell_has_its_config_and_its_own_out_dir():
    files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'config', '*.py'))}
    assert set(PAPER) <= files, f"cells without a config: {sorted(set(PAPER) - files)}"
    out_dirs = [load(f'{REPO}/config/{name}.py')['out_dir'] for name in PAPER]
    assert len(set(out_dirs)) == len(PAPER) == 20


@pytest.mark.parametrize('name', PAPER)
def test_cell(name):
    row, preset, optimizer = PAPER[name]
    model, size, dataset = ROWS[row]
    config = load(f'{REPO}/config/{name}.py')
    assert (config['preset'], config['opt'], config['dataset']) == (preset, optimizer, dataset)
    assert config['learning_rate'] == LR[model, optimizer]
    built = build(config, model)
    n_params = sum(p.numel() for p in built.parameters())
    assert abs(n_params / size - 1) < 0.05, f"{n_params:,} parameters for the paper's {size:,.0f}"
    assert built.config.mid_norm == built.config.input_norm == built.config.qk_norm == (preset == 'dnt')
    if optimizer == 'msgdw':
        assert config['momentum'] == 0.9 and not config['nesterov']
    assert config['gradient_accumulation_steps'] % GPUS == 0  # train.py refuses a split it cannot share out
    if model == 'gpt':  # nanoGPT's and Sophia's settings, which the paper follows
        tokens = config['batch_size'] * config['block_size'] * config['gradient_accumulation_steps']
        assert (tokens, config['block_size'], config['max_iters'], config['warmup_iters']) == (480 * 1024, 1024, 100_000, 2000)
        assert (config['grad_clip'], config['dropout'], config['bias']) == (1.0, 0.0, False)
        if optimizer == 'adamw':
            assert (config['beta1'], config['beta2'], config['weight_decay']) == (0.9, 0.95, 0.1)


@pytest.mark.parametrize('row', ROWS)
def test_a_rows_cells_differ_in_preset_and_optimizer_only(row):
    """The same data, model size, schedule and recipe in all four: a preset and an optimizer (with its keys) apart."""
    configs = {cell: load(f'{REPO}/config/{config_name(row, *cell)}.py') for cell in CELLS}
    for (a, b) in itertools.combinations(CELLS, 2):
        differ = {k for k in configs[a] if configs[a][k] != configs[b][k]} - {'out_dir', 'wandb_run_name'}
        allowed = ({'preset'} if a[0] != b[0] else set()) | (OPTIMIZER_KEYS if a[1] != b[1] else set())
        assert differ <= allowed, (a, b, differ - allowed)
