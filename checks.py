"""
train.py's config, resolved and checked before anything in out_dir is touched: a run that cannot
start changes nothing there. Every refusal is a ConfigError, reported by train.py in one line.
"""
import math
import os

import torch

import checkpoint
from configurator import ConfigError, overrides_from
from devices import check_device, check_dtype, default_dtype
from model import GPT2_MODELS

# the keys of an invocation (where it runs, what it does): a resumed run never takes them from its checkpoint
INVOCATION = ('out_dir', 'init_from', 'eval_only', 'overwrite', 'reset_optimizer', 'device', 'dtype', 'compile')
AT_LEAST = dict(batch_size=1, gradient_accumulation_steps=1, eval_interval=1, log_interval=1, eval_iters=1,
                max_iters=0, warmup_iters=0, lr_decay_iters=0, grad_stats_interval=0, vocab_size=0, crop_padding=0,
                learning_rate=0, min_lr=0, weight_decay=0, grad_clip=0)
FRACTIONS = ('momentum', 'beta1', 'beta2', 'label_smoothing')  # each in [0, 1)


def resolve(defaults, argv):
    """The config of defaults, config files and --key=value; with init_from='resume', the stored run's
    config changed only where a value given here differs. Returns (config, checkpoint or None, overrides:
    {key: (stored, given)}, notes: lines to print)."""
    cli = overrides_from(defaults, argv)
    config = {**defaults, **cli}
    if config['init_from'] not in ('scratch', 'resume', *GPT2_MODELS) and not os.path.isdir(config['init_from']):
        raise ConfigError(f"unknown init_from {config['init_from']!r}; choose 'scratch', 'resume', one of "
                          f"{', '.join(GPT2_MODELS)}, or a directory holding a saved GPT2LMHeadModel")
    if os.path.exists(config['out_dir']) and not os.path.isdir(config['out_dir']):
        raise ConfigError(f"out_dir {config['out_dir']} exists and is not a directory")
    ckpt_path = os.path.join(config['out_dir'], 'ckpt.pt')
    stored_run, overrides = None, {}
    if config['init_from'] == 'resume':
        try:
            stored_run = checkpoint.load(ckpt_path, 'optimizer', 'scaler', 'rng', 'best_val_loss')
        except ConfigError as e:
            raise ConfigError(f"{e}; check --out_dir, or start a new run there with --init_from=scratch "
                              "(--overwrite=True replaces a ckpt.pt)") from None
        stored = {k: v for k, v in stored_run['config'].items() if k in defaults and k not in INVOCATION}
        overrides = {k: (stored[k], v) for k, v in cli.items() if k in stored and v != stored[k]}
        config = {**defaults, **stored, **cli}
    elif os.path.exists(ckpt_path) and not config['eval_only'] and not config['overwrite']:
        raise ConfigError(f"{ckpt_path} holds an earlier run: continue it with --init_from=resume, replace it with "
                          "--overwrite=True, or give another --out_dir")
    check_device(config['device'])
    notes = []
    config['dtype'] = config['dtype'] or default_dtype(config['device'])  # follows the device actually used
    if config['device'].startswith('mps'):
        if 'compile' not in cli:
            config['compile'] = False
            notes.append("device mps: compile=False (inductor's MPS backend is not what the configs are tuned for; "
                         "--compile=True to try it)")
        if 'RANK' in os.environ:
            raise ConfigError("DDP runs on cuda (nccl) or cpu (gloo), not on mps: run one process on a Mac")
    check_values(config)
    if stored_run is not None and stored_run['iter_num'] > config['max_iters']:
        raise ConfigError(f"{ckpt_path} is at iter {stored_run['iter_num']}, past max_iters ({config['max_iters']}); "
                          "raise max_iters to train on")
    return config, stored_run, overrides, notes


def check_values(config):
    """The values the model config does not check itself."""
    for key, low in AT_LEAST.items():
        if config[key] < low:
            raise ConfigError(f"{key} must be at least {low}, got {config[key]}")
    for key in FRACTIONS:
        if not 0 <= config[key] < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {config[key]}")
    if config['optimizer'] not in ('msgdw', 'adamw', 'muon'):
        raise ConfigError(f"unknown optimizer {config['optimizer']!r}; choose 'msgdw', 'adamw' or 'muon'")
    if config['optimizer'] == 'muon' and not hasattr(torch.optim, 'Muon'):
        raise ConfigError(f"optimizer='muon' needs torch 2.9 or newer (torch.optim.Muon); this is torch {torch.__version__}")
    check_dtype(config['device'], config['dtype'])
    if config['decay_lr'] and config['min_lr'] > config['learning_rate']:
        raise ConfigError(f"min_lr ({config['min_lr']}) is above learning_rate ({config['learning_rate']}): "
                          "the schedule would rise; lower min_lr")
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    if config['gradient_accumulation_steps'] % world_size:
        raise ConfigError(f"gradient_accumulation_steps ({config['gradient_accumulation_steps']}) must be divisible "
                          f"by the number of processes ({world_size})")
    if config['wandb_log'] and not config['eval_only']:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("wandb_log=True needs wandb: pip install wandb") from None


def model_config(ModelConfig, config, from_data, meta):
    """ModelConfig from the config's model keys and what the data decides (`from_data`)."""
    if from_data.get('vocab_size', math.inf) < meta.get('vocab_size', 0):
        raise ConfigError(f"vocab_size ({config['vocab_size']}) is smaller than the dataset's ({meta['vocab_size']}); "
                          "use 0 to take the dataset's")
    fields = ModelConfig.__dataclass_fields__
    try:
        return ModelConfig(**{**{k: v for k, v in config.items() if k in fields}, **from_data})
    except ValueError as e:
        raise ConfigError(e) from None
