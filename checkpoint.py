"""
A run's state and files, for train.py (and sample.py's loading). Run is train.py's one handle on them:
exact resume (weights, optimizer, GradScaler, EMA, the data generator and every process's RNG, the log
cut back to the checkpoint), out_dir owned while the run lasts, log.jsonl, and a stop on SIGTERM / SIGINT
that lets the step finish and save. ckpt.pt is saved atomically and loaded with weights_only (a file
can't run code). GPT-2's weights to fine-tune. Each refusal is a ConfigError, which train.py reports in
one line.
"""
import json
import math
import os
import pickle
import shutil
import signal
import sys
from dataclasses import asdict

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
    config = checkpoint['config']
    if isinstance(config, dict) and 'optimizer' in config and 'opt' not in config:  # saved while the key was named 'optimizer'
        config['opt'] = config.pop('optimizer')
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
# the run: its state beside the model's and the optimizer's, and its files


def process():
    """(rank, world_size) of this process: (0, 1) outside DDP."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def say(text):
    if process()[0] == 0:
        print(text, flush=True)


class Run:
    """train.py's handle on everything a run keeps besides its model and optimizer: the checkpoint it resumes
    from, the generator that draws the training batches, every process's RNG, out_dir (owned while the run
    lasts), log.jsonl and wandb, and a stop asked for by SIGTERM or SIGINT. It saves and restores itself with
    the model and optimizer, so that a resumed run continues as if never stopped. checks.resolve makes it."""

    def __init__(self, config, stored=None, overrides=None, notes=()):
        self.config, self.stored = config, stored  # stored: the checkpoint of a resumed run
        self.overrides, self.notes = overrides or {}, list(notes)  # overrides: {key: (stored, given)}
        self.ckpt_path = os.path.join(config['out_dir'], 'ckpt.pt')
        self.log_path = os.path.join(config['out_dir'], 'log.jsonl')
        self.data_gen = torch.Generator().manual_seed(config['seed'])  # alike on every process: the same stream
        self.data_state = None  # the generator's state before the batches drawn last
        self.resumed_at, self.log_bytes, self.wandb, self.stop_requested = None, math.inf, None, None

    def batch_generator(self):
        """The generator for the next iteration's batches. A checkpoint saved before that iteration trains
        holds its state now, so that a resume draws the same batches."""
        self.data_state = self.data_gen.get_state()
        return self.data_gen

    def restore(self, model, optimizer, scaler, ema):
        """A resumed run's checkpoint into the model, optimizer, GradScaler, EMA and generators (every process
        loads the same); returns (iter_num, best_val_loss, evaluated: whether the eval of iter_num has run)."""
        checkpoint, path = self.stored, self.ckpt_path
        if checkpoint is None:
            return 0, math.inf, False
        # the resolved switches are compared, not the preset's name; dropout and drop_path may change between runs
        model_args = asdict(model.config)
        changed = {k: (v, model_args.get(k)) for k, v in checkpoint['model_args'].items()
                   if model_args.get(k) != v and k not in ('preset', 'dropout', 'drop_path')}
        if changed:
            raise ConfigError(f"{path} holds a different model: "
                              + ', '.join(f"{k}={a!r} there, {b!r} asked" for k, (a, b) in changed.items())
                              + "; use the checkpoint's settings or another --out_dir")
        fit(model, checkpoint['model'], f"{path}: its weights do not fit its model_args")
        self.restore_optimizer(optimizer, checkpoint)
        if checkpoint['scaler']:  # empty from a run without float16
            scaler.load_state_dict(checkpoint['scaler'])
        if ema is not None and checkpoint.get('ema'):
            fit(ema, checkpoint['ema'], f"{path}: its EMA of the weights does not fit its model",
                "; --ema_decay=0 resumes without it")
        elif ema is not None:
            ema.update_parameters(model)  # its first update copies the weights
            say(f"resume: {path} holds no EMA of the weights; it starts from the weights at iter {checkpoint['iter_num']}")
        self.restore_rng(checkpoint['rng'])
        self.resumed_at, self.log_bytes = checkpoint['iter_num'], checkpoint.get('log_bytes', math.inf)
        self.stored = None  # free the memory
        return checkpoint['iter_num'], checkpoint['best_val_loss'], checkpoint.get('evaluated', True)

    def restore_optimizer(self, optimizer, checkpoint):
        name, stored, path = self.config['opt'], checkpoint['config'].get('opt'), self.ckpt_path
        if self.config['reset_optimizer']:
            say(f"resume: a fresh {name} optimizer state (reset_optimizer=True)")
            return
        if name != stored:
            raise ConfigError(f"{path} was trained with opt={stored!r}, and its state does not fit {name!r}; "
                              f"resume with --opt={stored}, or add --reset_optimizer=True to start {name} from a fresh state")
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

    def restore_rng(self, rng):
        rank, world_size = process()
        kind = torch.device(self.config['device']).type
        self.data_gen.set_state(rng['data'])
        if rng['world_size'] != world_size:
            say(f"resume: {rng['world_size']} process(es) saved the RNG states, {world_size} run now: dropout "
                "continues from fresh seeds")
            return
        torch.set_rng_state(rng['cpu'][rank])
        if kind != 'cpu' and rng.get(kind):
            set_rng_state(self.config['device'], rng[kind][rank])
        elif kind != 'cpu':  # a checkpoint of another device: dropout on this one starts from its seed
            say(f"resume: {self.ckpt_path} holds no {kind} RNG state (trained on another device); {kind} dropout "
                "continues from a fresh seed")

    def start(self, config):
        """From here on out_dir is written (never under eval_only): the run owns it (run.lock: a second train.py
        there is refused) and writes config.json; a new run starts a fresh log.jsonl (overwrite=True: without the
        old checkpoint), a resumed one cuts what a killed run logged after its checkpoint, and a line cut midway.
        From here on, SIGTERM or SIGINT asks the loop to stop."""
        for note in self.notes:
            say(note)
        self.stop_requested = StopOnSignals(dist.is_initialized())
        if process()[0] != 0 or config['eval_only']:
            return
        out_dir = config['out_dir']
        claim(os.path.join(out_dir, 'run.lock'), out_dir)
        write_atomically(os.path.join(out_dir, 'config.json'), json.dumps(config, indent=1))
        if self.resumed_at is None:
            for path in (self.log_path, self.ckpt_path):
                if os.path.exists(path):
                    os.remove(path)
        elif os.path.exists(self.log_path):
            with open(self.log_path, 'rb') as f:
                kept = f.read(min(os.path.getsize(self.log_path), self.log_bytes))
            os.truncate(self.log_path, kept.rfind(b'\n') + 1)  # whole lines only
        if config['wandb_log']:
            import wandb
            self.wandb = wandb
            wandb.init(project=config['wandb_project'], name=config['wandb_run_name'], config=config)
        if self.resumed_at is not None:
            changed = {k: dict(checkpoint=old, now=new) for k, (old, new) in self.overrides.items()}
            self.write_log(dict(iter=self.resumed_at, resume=changed))

    def save(self, checkpoint):
        """Save train.py's `checkpoint` with the run's own state: the data generator's and every process's RNG
        state (every process calls this), and how much of log.jsonl belongs to it."""
        rank, world_size = process()
        rng = rng_states(self.data_state, self.config['device'], world_size)
        if rank == 0:
            log_bytes = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            save(self.ckpt_path, dict(checkpoint, rng=rng, log_bytes=log_bytes))
            print(f"saved checkpoint to {self.ckpt_path}", flush=True)

    def write_log(self, record):
        """One line of log.jsonl (and of wandb's log), from the first process."""
        if process()[0] == 0:
            append_log(self.log_path, record, record['iter'])
            if self.wandb is not None:
                self.wandb.log(record, step=record['iter'])

    def end(self):
        if self.wandb is not None:
            self.wandb.finish()
        if dist.is_initialized():
            dist.destroy_process_group()
            # DDP keeps the process group's worker threads alive into interpreter shutdown, where one that
            # releases a collective's tensor aborts the process (pytorch/pytorch#190489); all is saved: skip it
            sys.stdout.flush()
            os._exit(0)


def fit(module, state_dict, what, advice=''):
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        detail = ' '.join(str(e).split())[:300]  # the missing, unexpected or misshapen keys
        raise ConfigError(f"{what} ({detail}){advice}") from None


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
