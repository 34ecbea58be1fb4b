"""
One training loop for DNT-GPT (language, data/<dataset>/*.bin) and DNT-ViT (images).

Single process (a GPU, or a CPU for the small configs):
$ python train.py config/dnt_shakespeare_char.py
One node, 8 GPUs:
$ torchrun --standalone --nproc_per_node=8 train.py config/dnt_gpt2.py
Override any default below from a config file or the command line: --key=value.
"""
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import ConfigError, check_device, given
from data import DataError, ImageData, TextData, load_meta
from model import GPT, GPT2_MODELS, PRESETS, GPTConfig, ViT, ViTConfig, load_checkpoint

# ----------------------------------------------------------------------------------------
# default config: DNT GPT-2 124M on OpenWebText with mSGDW
# I/O
out_dir = 'out'
eval_interval = 1000
log_interval = 10
eval_iters = 200
eval_only = False  # evaluate the model (resume: the checkpoint's) once, print, write nothing
always_save_checkpoint = True  # else save only when val loss improves
init_from = 'scratch'  # 'scratch', 'resume' (the run in out_dir: its config, with the values given here changed),
# or GPT-2's weights to fine-tune: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'
overwrite = False  # scratch or GPT-2: replace the run (ckpt.pt, log.jsonl) that out_dir already holds
reset_optimizer = False  # resume: start a fresh optimizer state (the way to switch optimizer mid-run)
wandb_log = False
wandb_project = 'nanodnt'
wandb_run_name = 'dnt_gpt2'
# data
dataset = 'openwebtext'
data_dir = ''  # default: data/<dataset>
gradient_accumulation_steps = 40  # for the whole run: divided by the number of processes under DDP
batch_size = 12  # per micro-step and process
block_size = 1024
vocab_size = 0  # 0: meta.json's; 50304 pads GPT-2's 50257 to a multiple of 64 for speed
# images (data.py's ImageData); the defaults are the small-image (CIFAR) recipe, config/*imagenet.py the ImageNet one
image_size = 0  # train at this size, evaluate on the center crop of this size; 0: as stored
stream = False  # read batches from disk (memmap) in data_workers threads, an iteration ahead: for sets larger than memory
data_workers = 4
augment = True  # training images: crop, flip, mixup/CutMix on the device, per sample; False: as eval sees them
crop = 'pad'  # 'pad': random crop of the image zero-padded by crop_padding; 'rrc': random-resized-crop
crop_padding = 4
rrc_min_scale = 0.08  # rrc: the crop's area is rrc_min_scale..1 of the image's, its aspect ratio 3/4..4/3
flip = True  # random horizontal flip
mixup = 0.0  # mixup with lam ~ Beta(mixup, mixup); 0: off
cutmix = 0.0  # CutMix with lam ~ Beta(cutmix, cutmix); 0: off; with mixup, each micro-batch takes one of the two
label_smoothing = 0.0
# model (the norm switches left at None follow the preset; see model.py)
preset = 'dnt'
norm = 'layernorm'
input_norm = None
mlp_prenorm = None
qk_norm = None
mid_norm = None
final_norm = True
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False
patch_size = 4  # ViT
pool = 'cls'  # ViT: 'cls' or 'mean'
# optimizer: 'msgdw' (momentum SGD, decoupled weight decay), 'adamw', or 'muon' (Muon + AdamW, see model.py)
optimizer = 'msgdw'
learning_rate = 1.0
weight_decay = 1e-4
momentum = 0.9  # msgdw
nesterov = False  # msgdw
beta1 = 0.9  # adamw
beta2 = 0.95  # adamw
grad_clip = 1.0  # 0 disables
# learning rate: linear warmup, then cosine decay to min_lr
max_iters = 100000
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 100000
min_lr = 0.1
# diagnostics: gradient statistics every this many iterations into log.jsonl (0: off)
grad_stats_interval = 0
# system
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'
compile = True
seed = 1337
# ----------------------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]
defaults = {k: globals()[k] for k in config_keys}
# ----------------------------------------------------------------------------------------


def fail(message):
    print(f"train.py: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)  # always one line
    sys.exit(1)


# Everything below is checked before out_dir is touched: a run that cannot start changes nothing there.
try:
    cli = given(defaults, sys.argv[1:])  # the keys set by config files and --key=value
except ConfigError as e:
    fail(e)
config = {**defaults, **cli}
if config['init_from'] not in ('scratch', 'resume', *GPT2_MODELS) and not os.path.isdir(config['init_from']):
    fail(f"unknown init_from {config['init_from']!r}; choose 'scratch', 'resume', one of {', '.join(GPT2_MODELS)}, "
         "or a directory holding a saved GPT2LMHeadModel")
ckpt_path = os.path.join(config['out_dir'], 'ckpt.pt')
log_path = os.path.join(config['out_dir'], 'log.jsonl')
if os.path.exists(config['out_dir']) and not os.path.isdir(config['out_dir']):
    fail(f"out_dir {config['out_dir']} exists and is not a directory")
checkpoint, overrides = None, {}
if config['init_from'] == 'resume':
    try:
        checkpoint = load_checkpoint(ckpt_path, 'optimizer', 'scaler', 'rng', 'best_val_loss')
    except ValueError as e:
        fail(f"{e}; check --out_dir, or start a new run there with --init_from=scratch (--overwrite=True replaces a ckpt.pt)")
    # resume continues the stored run: its config, changed only where a value given here differs.
    # The keys of this invocation (where it runs, what it does) never come from the checkpoint.
    invocation = ('out_dir', 'init_from', 'eval_only', 'overwrite', 'reset_optimizer', 'device', 'dtype', 'compile')
    stored = {k: v for k, v in checkpoint['config'].items() if k in defaults and k not in invocation}
    overrides = {k: (stored[k], v) for k, v in cli.items() if k in stored and v != stored[k]}
    config = {**defaults, **stored, **cli}
elif os.path.exists(ckpt_path) and not config['eval_only'] and not config['overwrite']:
    fail(f"{ckpt_path} holds an earlier run: continue it with --init_from=resume, replace it with --overwrite=True, "
         "or give another --out_dir")
globals().update(config)


def check_config():
    """The values the model config does not check itself (it raises ValueError for those)."""
    at_least = dict(batch_size=1, gradient_accumulation_steps=1, eval_interval=1, log_interval=1, eval_iters=1,
                    max_iters=0, warmup_iters=0, lr_decay_iters=0, grad_stats_interval=0, vocab_size=0, crop_padding=0,
                    learning_rate=0, min_lr=0, weight_decay=0, grad_clip=0)
    for key, low in at_least.items():
        if config[key] < low:
            fail(f"{key} must be at least {low}, got {config[key]}")
    for key in ('momentum', 'beta1', 'beta2', 'label_smoothing'):
        if not 0 <= config[key] < 1:
            fail(f"{key} must be in [0, 1), got {config[key]}")
    if dtype not in ('float32', 'bfloat16', 'float16'):
        fail(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    try:
        check_device(device)
    except ConfigError as e:
        fail(e)
    if decay_lr and min_lr > learning_rate:
        fail(f"min_lr ({min_lr}) is above learning_rate ({learning_rate}): the schedule would rise; lower min_lr")
    if checkpoint is not None and checkpoint['iter_num'] > max_iters:
        fail(f"{ckpt_path} is at iter {checkpoint['iter_num']}, past max_iters ({max_iters}); raise max_iters to train on")


check_config()
if wandb_log and not eval_only:
    try:
        import wandb
    except ImportError:
        fail("wandb_log=True needs wandb: pip install wandb")

# distributed setup: torchrun sets RANK, LOCAL_RANK, WORLD_SIZE
ddp = int(os.environ.get('RANK', -1)) != -1
if ddp:
    rank, local_rank, world_size = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    dist.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    if gradient_accumulation_steps % world_size:
        fail(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the number of processes ({world_size})")
else:
    rank, local_rank, world_size = 0, 0, 1
master_process = rank == 0
accum_steps = gradient_accumulation_steps // world_size  # micro-steps of this process
device_type = 'cuda' if device.startswith('cuda') else 'cpu'
torch.manual_seed(seed + rank)  # dropout differs per process; the data stream below is shared
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)


def log(*args):
    if master_process:
        print(*args, flush=True)


# ----------------------------------------------------------------------------------------
# data (see data.py) and model: the two places where text and images differ

data_dir = config['data_dir'] = data_dir or os.path.join('data', dataset)  # recorded for sample.py
try:
    meta = load_meta(data_dir, log)
except (FileNotFoundError, ValueError) as e:
    fail(e)
data_gen = torch.Generator().manual_seed(seed)  # draws the training batches; alike on every process
if meta['kind'] == 'text':
    try:
        data = TextData(data_dir, meta, device, batch_size, block_size, eval_iters, eval_seed=seed + 1)
    except DataError as e:
        fail(e)
    ModelConfig, Model, loss_args = GPTConfig, GPT, {}
    derived = dict(block_size=block_size, vocab_size=vocab_size or meta['vocab_size'])
    if derived['vocab_size'] < meta['vocab_size']:
        fail(f"vocab_size ({vocab_size}) is smaller than the dataset's ({meta['vocab_size']}); use 0 to take the dataset's")
else:
    H, W, C = meta['shape']
    if H != W:
        fail(f"the ViT takes square images; {data_dir} holds {H}x{W}")
    try:
        data = ImageData(data_dir, meta, device, batch_size, image_size, augment, crop, crop_padding, rrc_min_scale,
                         flip, mixup, cutmix, stream, data_workers)
    except DataError as e:
        fail(e)
    ModelConfig, Model, loss_args = ViTConfig, ViT, dict(label_smoothing=label_smoothing)
    derived = dict(image_size=data.size, in_chans=C, num_classes=meta['num_classes'])
model_fields = [f.name for f in fields(ModelConfig)]
try:
    model_config = ModelConfig(**{**{k: v for k, v in config.items() if k in model_fields}, **derived})
except ValueError as e:
    fail(e)
if init_from in ('scratch', 'resume'):
    model = Model(model_config)
else:  # GPT-2's weights set the model's size, bias and vocabulary; dropout and a shorter block_size apply
    if meta.get('tokenizer') != 'gpt2':
        fail(f"init_from={init_from!r} fine-tunes GPT-2, which reads GPT-2 BPE tokens; {data_dir} holds "
             f"{meta.get('tokenizer') or meta['kind']} data: prepare GPT-2 BPE data, e.g. python prepare_data.py shakespeare")
    try:
        model = GPT.from_pretrained(init_from, dropout=dropout,
                                    **{k: config[k] for k in ('preset', 'norm', *PRESETS['standard'], 'final_norm')})
    except (ValueError, ImportError, OSError) as e:
        fail(f"init_from={init_from!r}: {e}")
    if block_size > model.config.block_size:
        fail(f"block_size {block_size} exceeds the context of {init_from} ({model.config.block_size})")
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
    model_config = model.config
    config.update({k: getattr(model_config, k) for k in ('n_layer', 'n_head', 'n_embd', 'bias', 'vocab_size')})  # what was trained
    log(f"init_from={init_from}: GPT-2's weights, {model_config.n_layer} layers, {model_config.n_head} heads, "
        f"width {model_config.n_embd}, vocab_size {model_config.vocab_size}, bias; these replace the config's")
model_args = asdict(model_config)  # resolved: the preset's switches filled in
model = model.to(device)

iter_num, best_val_loss, evaluated = 0, float('inf'), False  # evaluated: the eval of iter_num has run
if checkpoint is not None:
    # the resolved switches are compared, not the preset's name; dropout may change between runs
    changed = {k: (v, model_args.get(k)) for k, v in checkpoint['model_args'].items()
               if model_args.get(k) != v and k not in ('preset', 'dropout')}
    if changed:
        fail(f"{ckpt_path} holds a different model: " + ', '.join(f"{k}={a!r} there, {b!r} asked" for k, (a, b) in changed.items())
             + "; use the checkpoint's settings or another --out_dir")
    try:
        model.load_state_dict(checkpoint['model'])
    except RuntimeError as e:
        fail(f"{ckpt_path}: its weights do not fit its model_args ({str(e).splitlines()[0]})")
    iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
    evaluated = checkpoint.get('evaluated', True)  # checkpoints before this flag: saved only after an eval

scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
try:
    opt = model.configure_optimizers(optimizer, learning_rate, weight_decay, (beta1, beta2), momentum, nesterov, device_type)
except ValueError as e:
    fail(e)
if checkpoint is not None:
    stored_optimizer = checkpoint['config'].get('optimizer')
    if reset_optimizer:
        log(f"resume: a fresh {optimizer} optimizer state (reset_optimizer=True)")
    elif optimizer != stored_optimizer:
        fail(f"{ckpt_path} was trained with optimizer={stored_optimizer!r}, and its state does not fit {optimizer!r}; "
             f"resume with --optimizer={stored_optimizer}, or add --reset_optimizer=True to start {optimizer} from a fresh state")
    else:
        # the hyperparameters of this run's config, not the checkpoint's: a value given anew (say weight_decay) takes
        # effect. The implementation flags stay the checkpoint's: its state tensors were laid out for them.
        hyper = [{k: v for k, v in group.items() if k not in ('params', 'fused', 'foreach', 'capturable', 'differentiable')}
                 for group in opt.param_groups]
        try:
            opt.load_state_dict(checkpoint['optimizer'])
        except (KeyError, ValueError, RuntimeError) as e:
            fail(f"{ckpt_path}: its optimizer state does not fit this model ({type(e).__name__}: {e}); "
                 "--reset_optimizer=True starts a fresh one")
        for group, h in zip(opt.param_groups, hyper):
            group.update(h)
    if checkpoint['scaler']:  # empty from a run without float16
        scaler.load_state_dict(checkpoint['scaler'])
    data_gen.set_state(checkpoint['rng']['data'])
    if checkpoint['rng']['world_size'] == world_size:  # else dropout just continues from fresh seeds
        torch.set_rng_state(checkpoint['rng']['cpu'][rank])
        if device_type == 'cuda':
            torch.cuda.set_rng_state(checkpoint['rng']['cuda'][rank])

raw_model = model
if compile:
    log("compiling the model (about a minute)...")
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)


def all_reduce_sum(t):
    if ddp:
        dist.all_reduce(t)
    return t


@torch.no_grad()
def evaluate():
    """Mean loss on each of data.eval_splits (text: eval_iters batches of train and val; images: all of val), and top-1 for images."""
    model.eval()
    out = {}
    for split in data.eval_splits:
        total = torch.zeros(3, device=device)  # (sum of losses x samples, correct, samples)
        for x, y in data.eval_batches(split, rank, world_size):
            with ctx:
                logits, loss = model(x, y)
            total += torch.stack([loss.float() * len(y), (logits.argmax(-1) == y).sum().float(), torch.tensor(len(y), device=device).float()])
        loss_sum, correct, count = all_reduce_sum(total).tolist()
        out[f'{split}_loss'] = loss_sum / count
        if meta['kind'] == 'image':
            out[f'{split}_acc'] = correct / count
    model.train()
    return out


def diverged_hint():
    kept = f"; {ckpt_path} is the last good checkpoint" if os.path.exists(ckpt_path) else ""
    return f"Lower learning_rate (now {learning_rate}) or raise warmup_iters{kept}"


def get_lr(it):
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:  # linear warmup; (it + 1) so step 0 does not get lr 0
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


# ----------------------------------------------------------------------------------------
# gradient statistics (the paper's Figure 1): how heavy-tailed is |g|, per weight matrix

GRAD_KINDS = {'c_attn': 'attn_qkv', 'attn.c_proj': 'attn_out', 'c_fc': 'mlp_in', 'mlp.c_proj': 'mlp_out',
              'wte': 'embed', 'wpe': 'embed', 'patch': 'embed', 'head': 'head'}
GRAD_BIN_EDGES = torch.logspace(-12, 0, 49)  # 4 bins a decade; below and above go to the end bins


def grad_stats():
    """Histogram of |g| per kind of weight and pooled, and per-tensor tail statistics.
    Statistics use the nonzero entries: rows of tokens absent from the batch get exactly zero."""
    edges = GRAD_BIN_EDGES.to(device)
    hist, tensors = {}, {}
    for name, p in raw_model.named_parameters():
        if p.grad is None or p.dim() < 2:
            continue
        g = p.grad.detach().float().flatten()
        g = g[g != 0]
        if g.numel() == 0:
            continue
        a = g.abs().sort().values
        quantile = lambda q: a[min(int(q * a.numel()), a.numel() - 1)].item()
        centered = g - g.mean()
        kind = next((v for k, v in GRAD_KINDS.items() if k in name), 'other')
        stats = dict(kind=kind, median=quantile(0.5), p99=quantile(0.99), p999=quantile(0.999), max=a[-1].item(),
                     kurtosis=((centered ** 4).mean() / (centered ** 2).mean() ** 2).item())
        stats['p999_over_median'] = stats['p999'] / stats['median']
        tensors[name] = stats
        counts = torch.bucketize(a, edges).bincount(minlength=len(edges) + 1)
        for key in (kind, 'all'):
            hist[key] = hist.get(key, 0) + counts
    return dict(bin_edges=GRAD_BIN_EDGES.tolist(), hist={k: v.tolist() for k, v in hist.items()}, tensors=tensors)


# ----------------------------------------------------------------------------------------
# checkpoints and logs

def save_checkpoint():
    """Save the state after iteration iter_num; `evaluated` says whether that iteration's eval has run,
    `log_bytes` how much of log.jsonl belongs to it (a resume cuts what a killed run wrote after)."""
    # every process's RNG state, so that resuming on the same number of processes continues exactly
    rng = dict(data=data_gen.get_state(), world_size=world_size, cpu=[torch.get_rng_state()],
               cuda=[torch.cuda.get_rng_state()] if device_type == 'cuda' else [])
    if ddp:
        for key in ('cpu', 'cuda'):
            gathered = [None] * world_size
            dist.all_gather_object(gathered, rng[key][0] if rng[key] else None)
            rng[key] = gathered if rng[key] else []
    if not master_process:
        return
    checkpoint = dict(model=raw_model.state_dict(), optimizer=opt.state_dict(), scaler=scaler.state_dict(),
                      model_args=model_args, model_type=meta['kind'], iter_num=iter_num,
                      best_val_loss=best_val_loss, config=config, rng=rng, evaluated=evaluated,
                      log_bytes=os.path.getsize(log_path) if os.path.exists(log_path) else 0,
                      meta=meta)  # the dataset's meta.json: sample.py decodes with its tokenizer, data dir or not
    try:
        torch.save(checkpoint, ckpt_path + '.tmp')
        os.replace(ckpt_path + '.tmp', ckpt_path)  # atomic: a crash mid-write keeps the previous checkpoint
    except OSError as e:  # a full disk, a read-only one: the previous checkpoint stays, the partial file goes
        if os.path.exists(ckpt_path + '.tmp'):
            os.remove(ckpt_path + '.tmp')
        kept = f"{ckpt_path} still holds the last one" if os.path.exists(ckpt_path) else "nothing was saved"
        fail(f"cannot save the checkpoint of iter {iter_num} ({e.strerror or e}); {kept}: free space or fix "
             "the permissions of out_dir, then resume")
    log(f"saved checkpoint to {ckpt_path}")


def write_log(record):
    if master_process:
        with open(log_path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        if wandb_log:
            wandb.log(record, step=record['iter'])


# every input is checked: from here on out_dir is written (never under eval_only)
if master_process:
    log(json.dumps(config, indent=1))
    for key, (old, new) in overrides.items():
        log(f"resume: {key} = {new!r} (the checkpoint's run had {old!r})")
    log(f"{Model.__name__} with {raw_model.get_num_params() / 1e6:.2f}M parameters; {world_size} process(es), "
        f"{accum_steps} micro-steps of {batch_size} each, {data.samples_per_micro_step * accum_steps * world_size:,} "
        f"{data.unit} per iteration")
if master_process and not eval_only:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:
        json.dump(config, f, indent=1)
    if checkpoint is None:  # a fresh run starts a fresh log (and with overwrite=True, without the old checkpoint)
        for path in (log_path, ckpt_path):
            if os.path.exists(path):
                os.remove(path)
    elif os.path.exists(log_path) and os.path.getsize(log_path) > checkpoint.get('log_bytes', math.inf):
        os.truncate(log_path, checkpoint['log_bytes'])  # what a killed run logged after its checkpoint: logged again below
    if wandb_log:
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)
    if checkpoint is not None:
        write_log(dict(iter=iter_num, resume={k: dict(checkpoint=old, now=new) for k, (old, new) in overrides.items()}))
checkpoint = None  # free the memory

# SIGTERM (cluster preemption) or SIGINT: finish the step, save, exit 0. A second SIGINT kills.
stop_signal = []


def request_stop(signum, frame):
    stop_signal.append(signum)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


signal.signal(signal.SIGTERM, request_stop)
signal.signal(signal.SIGINT, request_stop)

# ----------------------------------------------------------------------------------------
# training loop

t0 = time.time()
running_mfu = -1.0
while True:
    lr = get_lr(iter_num)
    for group in opt.param_groups:
        group['lr'] = lr

    if eval_only or ((iter_num % eval_interval == 0 or iter_num == max_iters) and not evaluated):
        losses = evaluate()
        log(f"step {iter_num}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        if eval_only:
            break
        write_log(dict(iter=iter_num, lr=lr, **losses))
        evaluated = True
        if not math.isfinite(losses['val_loss']):
            fail(f"val loss is {losses['val_loss']} at iter {iter_num}; not saving. {diverged_hint()}")
        if iter_num > 0 and (losses['val_loss'] < best_val_loss or always_save_checkpoint):
            best_val_loss = min(best_val_loss, losses['val_loss'])
            save_checkpoint()
    if iter_num >= max_iters:
        break

    # forward, backward, update; sync gradients across processes on the last micro-step only
    loss_sum = torch.zeros((), device=device)
    for micro_step, (x, y) in enumerate(data.get_batches('train', gradient_accumulation_steps,
                                                         slice(rank * accum_steps, (rank + 1) * accum_steps), data_gen)):
        if ddp:
            model.require_backward_grad_sync = micro_step == accum_steps - 1
        with ctx:
            _, loss = model(x, y, **loss_args)
            loss = loss / accum_steps  # the gradient is the mean over micro-steps
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    scaler.unscale_(opt)
    if grad_stats_interval and iter_num % grad_stats_interval == 0 and master_process:
        write_log(dict(iter=iter_num, grad_stats=grad_stats()))
    if grad_clip != 0.0:
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    iter_num += 1
    evaluated = False

    # one small all-reduce per iteration: every process sees the same mean loss and stop request
    status = all_reduce_sum(torch.stack([loss_sum.float(), torch.tensor(float(bool(stop_signal)), device=device)]))
    lossf, stop = status[0].item() / world_size, status[1].item() > 0
    if not math.isfinite(lossf):
        fail(f"loss is {lossf} at iter {iter_num}; stopping without saving. {diverged_hint()}")
    t1 = time.time()
    dt, t0 = t1 - t0, t1
    if iter_num % log_interval == 0:
        throughput = data.samples_per_micro_step * accum_steps * world_size / dt
        mfu = raw_model.estimate_mfu(accum_steps * batch_size, dt)
        if mfu is not None:
            running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
        log(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.3e}, time {dt * 1000:.2f}ms, "
            f"{throughput:,.0f} {data.unit}/s"
            + (f", mfu {running_mfu * 100:.2f}%" if mfu is not None else ""))
        write_log(dict(iter=iter_num, loss=lossf, lr=lr, ms=dt * 1000, throughput=throughput, mfu=mfu))
    if stop:
        log(f"stop requested by signal at iter {iter_num}: saving and exiting")
        save_checkpoint()
        break

if ddp:
    dist.destroy_process_group()
    # DDP keeps the process group's worker threads alive into interpreter shutdown, where one that
    # releases a collective's tensor aborts the process (pytorch/pytorch#190489); all is saved: skip it
    if wandb_log and master_process and not eval_only:
        wandb.finish()
    sys.stdout.flush()
    os._exit(0)
