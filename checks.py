"""
Every input train.py takes, checked before anything in out_dir is touched: the config (resolved with a
resumed run's) here, the data in datachecks.py. A run that cannot start changes nothing there. Every refusal
is a ConfigError or a DataError, reported by the scripts in one line.
"""
import json
import math
import os

import torch

import checkpoint
from configurator import ConfigError, overrides_from
from devices import check_device, check_dtype, default_dtype
from model import GPT2_MODELS

# A resumed run takes every key from its checkpoint (given anew, a key overrides it) but the command's own ...
INVOCATION = ('out_dir', 'init_from', 'eval_only', 'overwrite', 'reset_optimizer')
# ... and the machine's: where it runs, what it reads with. The rest, dtype and compile among them, are the run's.
MACHINE = ('device', 'data_workers')
ROUNDING = ('device', 'dtype', 'compile')  # another value rounds differently: the run drifts from an unbroken one
DATA_KEYS = ('dataset', 'data_dir')  # a resumed run keeps its data
IMAGE_KEYS = ('image_size', 'stream', 'data_workers', 'augment', 'crop', 'crop_padding', 'rrc_min_scale', 'flip', 'mixup',
              'cutmix', 'three_augment', 'color_jitter', 'random_erasing', 'label_smoothing', 'patch_size', 'pool')
TEXT_KEYS = ('block_size', 'vocab_size')
RUN_FILES = ('config.json', 'log.jsonl', 'ckpt.pt', 'run.lock')  # what train.py writes in out_dir
AT_LEAST = dict(batch_size=1, gradient_accumulation_steps=1, eval_interval=1, log_interval=1, eval_iters=1,
                max_iters=0, warmup_iters=0, lr_decay_iters=0, grad_stats_interval=0, vocab_size=0, crop_padding=0,
                learning_rate=0, min_lr=0, weight_decay=0, grad_clip=0)
FRACTIONS = ('momentum', 'beta1', 'beta2', 'label_smoothing', 'color_jitter', 'ema_decay')  # each in [0, 1)
PROBABILITIES = ('random_erasing',)  # each in [0, 1]


def resolve(defaults, argv):
    """The config of defaults, config files and --key=value; with init_from='resume', the stored run's
    config changed only where a value given here differs. Returns (config, checkpoint.Run: a resumed run's
    holds its checkpoint, what the command changed in it, and notes to print)."""
    cli = overrides_from(defaults, argv)
    config = {**defaults, **cli}
    if config['init_from'] not in ('scratch', 'resume', *GPT2_MODELS) and not os.path.isdir(config['init_from']):
        raise ConfigError(f"unknown init_from {config['init_from']!r}; choose 'scratch', 'resume', one of "
                          f"{', '.join(GPT2_MODELS)}, or a directory holding a saved GPT2LMHeadModel")
    if not config['out_dir']:
        raise ConfigError("out_dir is empty; give the directory of the run, e.g. --out_dir=out")
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
        stored = {k: v for k, v in stored_run['config'].items() if k in defaults and k not in INVOCATION + MACHINE}
        overrides = {k: (stored[k], v) for k, v in cli.items() if k in stored and v != stored[k]}
        config = {**defaults, **stored, **cli}
        trained_on = data_path(stored_run['config'])
        other = {k: cli[k] for k in DATA_KEYS if k in cli and cli[k] != stored.get(k)}
        if other and os.path.abspath(data_path(config)) != os.path.abspath(trained_on) or 'dataset' in other:
            given = ' '.join(f"--{k}={v}" for k, v in other.items())
            raise ConfigError(f"{ckpt_path} was trained on the data in {trained_on}, and {given} names other data: a "
                              "resumed run keeps its data; resume without it, or train on other data in another --out_dir")
    elif os.path.exists(ckpt_path) and config['eval_only']:
        raise ConfigError(f"{ckpt_path} holds a run: evaluate it with --init_from=resume --eval_only=True "
                          "(eval_only from scratch evaluates a fresh model, in another out_dir)")
    elif os.path.exists(ckpt_path) and not config['overwrite']:
        raise ConfigError(f"{ckpt_path} holds an earlier run: continue it with --init_from=resume, replace it with "
                          "--overwrite=True, or give another --out_dir")
    check_device(config['device'])
    notes = []
    config['dtype'] = config['dtype'] or default_dtype(config['device'])  # follows the device actually used
    if stored_run is not None:
        notes += resume_notes(stored_run['config'], config)
    notes += unused_keys(config, cli, defaults)
    if config['device'].startswith('mps'):
        if 'compile' not in cli:
            config['compile'] = False
            notes.append("device mps: compile=False (inductor's MPS backend is not what the configs are tuned for; "
                         "--compile=True to try it)")
        if 'RANK' in os.environ:
            raise ConfigError("DDP runs on cuda (nccl) or cpu (gloo), not on mps: run one process on a Mac")
    check_values(config)
    if not config['eval_only']:
        check_writable(config['out_dir'])
        for name in RUN_FILES:
            path = os.path.join(config['out_dir'], name)
            if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
                raise ConfigError(f"{path} is not a regular file, and the run writes one there: move it away, or "
                                  "give another --out_dir")
    if stored_run is not None and stored_run['iter_num'] > config['max_iters']:
        raise ConfigError(f"{ckpt_path} is at iter {stored_run['iter_num']}, past max_iters ({config['max_iters']}); "
                          "raise max_iters to train on")
    notes += [f"resume: {k} = {new!r} (the checkpoint's run had {old!r})" for k, (old, new) in overrides.items()]
    return config, checkpoint.Run(config, stored_run, overrides, notes)


def data_path(config):
    return config['data_dir'] or os.path.join('data', config['dataset'])


def resume_notes(stored, config):
    """What a resumed run changes that the user may not see coming."""
    notes = []
    kind = lambda device: device.split(':')[0]
    rounding = [k for k in ROUNDING if (kind(stored.get(k, '')) if k == 'device' else stored.get(k)) !=
                (kind(config[k]) if k == 'device' else config[k])]
    if rounding:
        notes.append("resume: " + ', '.join(f"{k} {config[k]!r} (the stored run's: {stored.get(k)!r})" for k in rounding)
                     + ": this rounds differently, so from here on the run will not equal one that was never stopped")
    if stored.get('ema_decay') and not config['ema_decay']:
        notes.append("resume: ema_decay=0: the checkpoint's EMA of the weights is dropped at the next save")
    return notes


def unused_keys(config, given, defaults):
    """A note naming the keys set (to other than their default) that the run's kind of data ignores."""
    meta_path = os.path.join(data_path(config), 'meta.json')
    try:
        with open(meta_path, encoding='utf-8') as f:
            kind = json.load(f).get('kind')
    except (OSError, ValueError, AttributeError):
        return []  # nanoGPT's token files (text) or no dataset: the data checks say what is wrong
    unused = [k for k in (IMAGE_KEYS if kind == 'text' else TEXT_KEYS if kind == 'image' else ())
              if k in given and given[k] != defaults[k]]
    if not unused:
        return []
    return [f"{', '.join(unused)}: set, but {kind} data does not use {'it' if len(unused) == 1 else 'them'}; "
            f"this run ignores {'it' if len(unused) == 1 else 'them'}"]


def check_values(config):
    """The values the model config does not check itself."""
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    if not 0 <= config['seed'] < 2 ** 63 - 1024:  # seed + rank and seed + 1 seed generators too
        raise ConfigError(f"seed must be in 0..2**63-1025, got {config['seed']}")
    for key, low in AT_LEAST.items():
        if config[key] < low:
            raise ConfigError(f"{key} must be at least {low}, got {config[key]}")
    for key in FRACTIONS:
        if not 0 <= config[key] < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {config[key]}")
    for key in PROBABILITIES:
        if not 0 <= config[key] <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {config[key]}")
    if config['opt'] not in ('msgdw', 'adamw', 'lion', 'muon'):
        raise ConfigError(f"unknown opt {config['opt']!r}; choose 'msgdw', 'adamw', 'lion' or 'muon'")
    if config['opt'] == 'muon' and not hasattr(torch.optim, 'Muon'):
        raise ConfigError(f"opt='muon' needs torch 2.9 or newer (torch.optim.Muon); this is torch {torch.__version__}")
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


def check_sample_args(args):
    """sample.py's arguments; its dtype, when not given, follows the device."""
    for name, low in (('num_samples', 1), ('max_new_tokens', 1), ('top_k', 0), ('batch_size', 1)):
        if getattr(args, name) < low:
            raise ConfigError(f"--{name} must be at least {low}, got {getattr(args, name)}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature must be a number > 0, got {args.temperature} (use --top_k=1 for greedy decoding)")
    if not 0 <= args.seed < 2 ** 63:
        raise ConfigError(f"--seed must be in 0..2**63-1, got {args.seed}")
    check_device(args.device)
    args.dtype = args.dtype or default_dtype(args.device)
    check_dtype(args.device, args.dtype)


def prompt_ids(start, encode):
    """sample.py's --start (FILE:path: the file's text) as token ids."""
    if start.startswith('FILE:'):
        try:
            with open(start[5:], encoding='utf-8') as f:
                start = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read the prompt file {start[5:]}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"the prompt file {start[5:]} is not UTF-8 text") from None
    try:
        ids = encode(start)
    except ValueError as e:
        raise ConfigError(f"the prompt has {e}") from None
    if not ids:
        raise ConfigError("the prompt is empty; give at least one token with --start")
    return ids


def check_writable(out_dir):
    """out_dir, or the nearest folder above it that exists (where it will be made), takes new files."""
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"cannot make {out_dir}: {existing} is a file, not a directory; give another --out_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {existing} (read-only or not yours): give another --out_dir")



def model_config(ModelConfig, config, from_data, meta):
    """ModelConfig from the config's model keys and what the data decides (`from_data`)."""
    if from_data.get('vocab_size', math.inf) < meta.get('vocab_size', 0):
        raise ConfigError(f"vocab_size ({config['vocab_size']}) is smaller than the dataset's ({meta['vocab_size']}); "
                          "use 0 to take the dataset's")
    fields = ModelConfig.__dataclass_fields__
    try:
        model_config = ModelConfig(**{**{k: v for k, v in config.items() if k in fields}, **from_data})
    except ValueError as e:
        raise ConfigError(e) from None
    d, tokens = model_config.n_embd, from_data.get('vocab_size', 0) + from_data.get('block_size', 0)
    weights = 4 * (12 * model_config.n_layer * d * d + tokens * d)  # float32 bytes of the blocks and embeddings
    memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    if weights > memory:
        raise ConfigError(f"n_layer {model_config.n_layer} x n_embd {d}: {weights / 2**30:,.0f} GiB of float32 weights "
                          f"alone, more than this machine's {memory / 2**30:,.0f} GiB of memory")
    return model_config
