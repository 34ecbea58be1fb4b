"""
A run's files in out_dir, for train.py (and sample.py's loading): ckpt.pt saved atomically and
loaded with weights_only (a file can't run code), exact resume (weights, optimizer, GradScaler,
the data generator and every process's RNG, the log cut back to the checkpoint), GPT-2's weights
to fine-tune, and a stop on SIGTERM / SIGINT that lets the step finish and save.
Each refusal is a ConfigError, which train.py reports in one line.
"""
import json
import math
import os
import pickle
import shutil
import signal

import torch
import torch.distributed as dist

from configurator import ConfigError
from datachecks import claim
from devices import rng_state, set_rng_state
from model import GPT, PRESETS

# ----------------------------------------------------------------------------------------
# ckpt.pt


def load(path, *keys):
    """A train.py checkpoint, on the CPU (its RNG states must stay there), holding at least `keys` and
    what sample.py needs. A missing, truncated or foreign file raises ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if not any(words in str(e) for words in ('Unsupported global', 'unsupported GLOBAL')):
            raise ConfigError(f"{path} is not a readable checkpoint (UnpicklingError)") from None
        raise ConfigError(f"{path} was refused: it names Python objects other than tensors and plain data, and "
                          "loading those could run code; train.py writes no such checkpoint") from None
    except Exception as e:  # an empty, truncated or foreign file fails wherever its first bad byte is
        reason = (str(e).strip().splitlines() or [''])[0][:200]
        raise ConfigError(f"{path} is not a readable checkpoint ({type(e).__name__}: {reason})") from None
    needed = ('model', 'model_args', 'model_type', 'config', 'iter_num', *keys)
    missing = [k for k in needed if k not in checkpoint] if isinstance(checkpoint, dict) else needed
    if missing:
        raise ConfigError(f"{path} is not a checkpoint of train.py (it lacks {', '.join(missing)})")
    return checkpoint


def model_weights(checkpoint, ema=True):
    """The model's state dict: its EMA's where asked and there (AveragedModel's keys, less 'module.' and
    n_averaged), else the weights'."""
    if ema and checkpoint.get('ema'):
        return {k.removeprefix('module.'): v for k, v in checkpoint['ema'].items() if k != 'n_averaged'}
    return checkpoint['model']


def save(path, checkpoint):
    """Write to a temporary file, then rename: a crash mid-write keeps the previous checkpoint. A full or
    read-only disk leaves no partial file and raises ConfigError."""
    try:
        torch.save(checkpoint, path + '.tmp')
        os.replace(path + '.tmp', path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as a RuntimeError
        if os.path.exists(path + '.tmp'):
            os.remove(path + '.tmp')
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}, {free:,} bytes free there"
        kept = f"{path} still holds the last one" if os.path.exists(path) else "nothing was saved"
        raise ConfigError(f"cannot save the checkpoint of iter {checkpoint['iter_num']} ({reason}); "
                          f"{kept}: free space or fix the permissions of out_dir, then resume") from None


def rng_states(data_state, device, world_size):
    """The data generator's state (as given) and every process's CPU RNG state, and its device's (cuda or
    mps): resuming on the same number of processes then continues dropout exactly."""
    rng = dict(data=data_state, world_size=world_size, cpu=[torch.get_rng_state()])
    kind, state = torch.device(device).type, rng_state(device)
    if state is not None:
        rng[kind] = [state]
    if world_size > 1:
        for key in ('cpu', kind) if state is not None else ('cpu',):
            gathered = [None] * world_size
            dist.all_gather_object(gathered, rng[key][0])
            rng[key] = gathered
    return rng

# ----------------------------------------------------------------------------------------
# resume


def restore(checkpoint, path, model, model_args, optimizer, scaler, data_gen, config, rank, world_size, log):
    """Load a checkpoint into the model, optimizer, GradScaler and generators of a resumed run;
    returns (iter_num, best_val_loss, evaluated)."""
    # the resolved switches are compared, not the preset's name; dropout and drop_path may change between runs
    changed = {k: (v, model_args.get(k)) for k, v in checkpoint['model_args'].items()
               if model_args.get(k) != v and k not in ('preset', 'dropout', 'drop_path')}
    if changed:
        raise ConfigError(f"{path} holds a different model: "
                          + ', '.join(f"{k}={a!r} there, {b!r} asked" for k, (a, b) in changed.items())
                          + "; use the checkpoint's settings or another --out_dir")
    try:
        model.load_state_dict(checkpoint['model'])
    except RuntimeError as e:
        detail = ' '.join(str(e).split())[:300]  # the missing, unexpected or misshapen keys
        raise ConfigError(f"{path}: its weights do not fit its model_args ({detail})") from None
    name, stored = config['optimizer'], checkpoint['config'].get('optimizer')
    if config['reset_optimizer']:
        log(f"resume: a fresh {name} optimizer state (reset_optimizer=True)")
    elif name != stored:
        raise ConfigError(f"{path} was trained with optimizer={stored!r}, and its state does not fit {name!r}; "
                          f"resume with --optimizer={stored}, or add --reset_optimizer=True to start {name} from a fresh state")
    else:
        # this run's hyperparameters, not the checkpoint's: a value given anew (say weight_decay) takes effect.
        # The implementation flags stay the checkpoint's: its state tensors were laid out for them.
        flags = ('params', 'fused', 'foreach', 'capturable', 'differentiable')
        hyperparameters = [{k: v for k, v in group.items() if k not in flags} for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
        except (KeyError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{path}: its optimizer state does not fit this model ({type(e).__name__}: {e}); "
                              "--reset_optimizer=True starts a fresh one") from None
        for group, h in zip(optimizer.param_groups, hyperparameters):
            group.update(h)
    if checkpoint['scaler']:  # empty from a run without float16
        scaler.load_state_dict(checkpoint['scaler'])
    rng, kind = checkpoint['rng'], torch.device(config['device']).type
    data_gen.set_state(rng['data'])
    if rng['world_size'] != world_size:
        log(f"resume: {rng['world_size']} process(es) saved the RNG states, {world_size} run now: dropout "
            "continues from fresh seeds")
    else:
        torch.set_rng_state(rng['cpu'][rank])
        if kind != 'cpu' and rng.get(kind):
            set_rng_state(config['device'], rng[kind][rank])
        elif kind != 'cpu':  # a checkpoint of another device: dropout on this one starts from its seed
            log(f"resume: {path} holds no {kind} RNG state (trained on another device); {kind} dropout "
                "continues from a fresh seed")
    return checkpoint['iter_num'], checkpoint['best_val_loss'], checkpoint.get('evaluated', True)


def restore_ema(checkpoint, path, ema, model, log):
    """The EMA of the weights (if any) of a resumed run (if one): the checkpoint's, or the weights where it has none."""
    if ema is None or checkpoint is None:
        return
    if not checkpoint.get('ema'):
        ema.update_parameters(model)  # its first update copies the weights
        log(f"resume: {path} holds no EMA of the weights; it starts from the weights at iter {checkpoint['iter_num']}")
        return
    try:
        ema.load_state_dict(checkpoint['ema'])
    except RuntimeError as e:
        detail = ' '.join(str(e).split())[:300]
        raise ConfigError(f"{path}: its EMA of the weights does not fit its model ({detail}); "
                          "--ema_decay=0 resumes without it") from None


def start_run_dir(out_dir, config, checkpoint):
    """Own out_dir for the run's lifetime (run.lock: a second train.py there is refused) and write config.json;
    a fresh run starts a fresh log.jsonl (and with overwrite=True, without the old checkpoint); a resumed one cuts
    what a killed run logged after its checkpoint, to be logged again, and a line cut midway."""
    claim(os.path.join(out_dir, 'run.lock'), out_dir)
    write_atomically(os.path.join(out_dir, 'config.json'), json.dumps(config, indent=1))
    log_path = os.path.join(out_dir, 'log.jsonl')
    if checkpoint is None:
        for path in (log_path, os.path.join(out_dir, 'ckpt.pt')):
            if os.path.exists(path):
                os.remove(path)
    elif os.path.exists(log_path):
        with open(log_path, 'rb') as f:
            kept = f.read(min(os.path.getsize(log_path), checkpoint.get('log_bytes', math.inf)))
        os.truncate(log_path, kept.rfind(b'\n') + 1)  # whole lines only


def write_atomically(path, text):
    """path holds text, or (a full or read-only disk) what it held before, and ConfigError says why."""
    try:
        with open(path + '.tmp', 'w') as f:
            f.write(text)
        os.replace(path + '.tmp', path)
    except OSError as e:
        if os.path.exists(path + '.tmp'):
            os.remove(path + '.tmp')
        raise ConfigError(f"cannot write {path} ({e.strerror}); nothing in it was changed: free space or fix the "
                          "permissions of out_dir") from None


def append_log(path, record, iter_num):
    """One line of log.jsonl; on a full disk, the log as it was and ConfigError (ckpt.pt holds the last save)."""
    size = os.path.getsize(path) if os.path.exists(path) else 0
    try:
        with open(path, 'a') as f:
            f.write(json.dumps(record) + '\n')
    except OSError as e:
        os.truncate(path, size)
        raise ConfigError(f"cannot write {path} at iter {iter_num} ({e.strerror}); free space, then resume from "
                          "its checkpoint") from None


def load_gpt2(name, config, meta, data_dir):
    """GPT-2's weights to fine-tune (model.py's GPT.from_pretrained), cropped to config's block_size; they
    set the model's size, bias and vocabulary."""
    if meta.get('tokenizer') != 'gpt2':
        raise ConfigError(f"init_from={name!r} fine-tunes GPT-2, which reads GPT-2 BPE tokens; {data_dir} holds "
                          f"{meta.get('tokenizer') or meta['kind']} data: prepare GPT-2 BPE data, "
                          "e.g. python prepare_data.py shakespeare")
    norms = {k: config[k] for k in ('preset', 'norm', *PRESETS['standard'], 'final_norm')}
    try:
        model = GPT.from_pretrained(name, dropout=config['dropout'], **norms)
    except (ValueError, ImportError, OSError) as e:
        raise ConfigError(f"init_from={name!r}: {e}") from None
    if config['block_size'] > model.config.block_size:
        raise ConfigError(f"block_size {config['block_size']} exceeds the context of {name} ({model.config.block_size})")
    if config['block_size'] < model.config.block_size:
        model.crop_block_size(config['block_size'])
    return model

# ----------------------------------------------------------------------------------------
# SIGTERM (cluster preemption) or SIGINT: the loop finishes its step, saves and exits 0; a second SIGINT kills


class StopOnSignals:
    """Called once an iteration: True when the run should stop now. One process stops at the iteration a signal
    came in. Under DDP the processes vote each iteration, in an all-reduce on the host (a gloo group of its own)
    that runs while the next iteration trains and is read at its end: they stop together one iteration after
    the signal, and no iteration waits for the device. (torchrun kills its workers 30 s after it forwards a
    SIGTERM: an eval and a save must fit in that.)"""

    def __init__(self, ddp):
        self.received, self.vote = [], None
        self.group = dist.new_group(backend='gloo') if ddp else None
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def request_stop(self, signum, frame):
        self.received.append(signum)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    def __call__(self):
        if self.group is None:
            return bool(self.received)
        stop = False
        if self.vote is not None:  # the votes of the iteration before
            work, votes = self.vote
            work.wait()
            stop = votes.item() > 0
        votes = torch.tensor(float(bool(self.received)))
        self.vote = (dist.all_reduce(votes, group=self.group, async_op=True), votes)
        return stop
