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
import sys
import time
from dataclasses import asdict

from configurator import ConfigError, report_errors
report_errors('train.py')  # from here on, a wrong input (or Ctrl-C before the loop): one line on stderr, exit 1

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import checks
from data import TextData, eval_sums, load_meta
from devices import autocast, default_device, set_current
from diagnostics import grad_stats
from images import ImageData
from model import GPT, GPTConfig, ViT, ViTConfig
from optim import EMA

# ----------------------------------------------------------------------------------------
# default config: DNT GPT-2 124M on OpenWebText with mSGDW
# I/O
out_dir = 'out'
eval_interval = 1000
log_interval = 10
eval_iters = 200
eval_only = False  # evaluate the model (resume: the checkpoint's) once, print, write nothing
always_save_checkpoint = True  # else save only when val loss improves
# 'scratch', 'resume' (the run in out_dir: its config, changed where a value is given here),
# or GPT-2's weights to fine-tune: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'
init_from = 'scratch'
overwrite = False  # scratch or GPT-2: replace the run (ckpt.pt, log.jsonl) in out_dir
reset_optimizer = False  # resume with a fresh optimizer state (to switch optimizer mid-run)
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
# images (images.py's ImageData): the CIFAR recipe; config/*imagenet.py set the ImageNet one
image_size = 0  # train at this size, evaluate on the center crop of this size; 0: as stored
stream = False  # read batches from disk in data_workers threads, an iteration ahead (sets larger than memory)
data_workers = 4
augment = True  # crop, flip, mixup/CutMix on the device, per sample; False: train on what eval sees
crop = 'pad'  # 'pad': random crop of the image zero-padded by crop_padding; 'rrc': random-resized-crop
crop_padding = 4
rrc_min_scale = 0.08  # rrc: the crop's area is rrc_min_scale..1 of the image's, aspect ratio 3/4..4/3
flip = True  # random horizontal flip
mixup = 0.0  # mixup with lam ~ Beta(mixup, mixup); 0: off
cutmix = 0.0  # CutMix with lam ~ Beta(cutmix, cutmix); 0: off; with mixup on too, one of the two per micro-batch
three_augment = False  # DeiT III's 3-Augment: grayscale, solarization or Gaussian blur, one per image
color_jitter = 0.0  # brightness, contrast and saturation each scaled by 1 +- up to this; 0: off
random_erasing = 0.0  # the probability that an image gets a box of noise; 0: off
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
drop_path = 0.0  # stochastic depth of the last block (linearly less before it); 0: off
bias = False
patch_size = 4  # ViT
pool = 'cls'  # ViT: 'cls' or 'mean'
# optimizer: 'msgdw' (momentum SGD, decoupled weight decay), 'adamw', 'lion' or 'muon' (Muon + AdamW; optim.py)
opt = 'msgdw'
learning_rate = 1.0
weight_decay = 1e-4
momentum = 0.9  # msgdw
nesterov = False  # msgdw
beta1 = 0.9  # adamw, lion
beta2 = 0.95  # adamw, lion
grad_clip = 1.0  # 0 disables
ema_decay = 0.0  # an exponential moving average of the weights, evaluated beside them; 0: off
# learning rate: linear warmup, then cosine decay to min_lr
max_iters = 100000
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 100000
min_lr = 0.1
# diagnostics: gradient statistics every this many iterations into log.jsonl (0: off)
grad_stats_interval = 0
# system
device = default_device()  # 'cuda' where torch sees a GPU, else 'mps' on a Mac's GPU, else 'cpu'
dtype = ''  # '': bfloat16 on a CUDA GPU that supports it, else float32; or float32, bfloat16, float16
compile = True
seed = 1337
# ----------------------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]
defaults = {k: globals()[k] for k in config_keys}
# ----------------------------------------------------------------------------------------
# config files, --key=value and, to resume, the stored run's config; all checked before out_dir is touched.
# run (checkpoint.py): what the run keeps besides model and optimizer (a resumed run's, from its checkpoint)
config, run = checks.resolve(defaults, sys.argv[1:])
globals().update(config)

# DDP: torchrun sets RANK, LOCAL_RANK, WORLD_SIZE
ddp = int(os.environ.get('RANK', -1)) != -1
if ddp:
    rank, local_rank, world_size = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
    dist.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
else:
    rank, local_rank, world_size = 0, 0, 1
master_process = rank == 0
set_current(device)  # cuda:N: its RNG state is the one saved and restored
accum_steps = gradient_accumulation_steps // world_size  # micro-steps of this process
device_type = torch.device(device).type  # 'cpu', 'cuda' or 'mps'
torch.manual_seed(seed + rank)  # dropout differs per process; the batches (run.batch_generator) do not
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ctx = autocast(device, dtype)


def log(*args):
    if master_process:
        print(*args, flush=True)


# ----------------------------------------------------------------------------------------
# data (data.py, images.py) and model (model.py): the two places where text and images differ

data_dir = data_dir or os.path.join('data', dataset)
meta = load_meta(data_dir, log)
if meta['kind'] == 'text':
    data = TextData(data_dir, meta, device, batch_size, block_size, eval_iters, eval_seed=seed + 1)
    ModelConfig, Model, loss_args = GPTConfig, GPT, {}
    from_data = dict(block_size=block_size, vocab_size=vocab_size or meta['vocab_size'])
else:
    data = ImageData(data_dir, meta, device, batch_size, image_size, augment, crop, crop_padding, rrc_min_scale,
                     flip, mixup, cutmix, stream, data_workers, three_augment, color_jitter, random_erasing)
    ModelConfig, Model, loss_args = ViTConfig, ViT, dict(label_smoothing=label_smoothing)
    from_data = dict(image_size=data.size, in_chans=meta['shape'][2], num_classes=meta['num_classes'])
model_config = checks.model_config(ModelConfig, config, from_data, meta)
if init_from in ('scratch', 'resume'):
    model = Model(model_config)
else:  # GPT-2's weights: they set the model's size, bias and vocabulary
    model = checkpoint.load_gpt2(init_from, config, meta, data_dir)
    n_layer, n_head, n_embd, bias, vocab_size = (getattr(model.config, k)
                                                 for k in ('n_layer', 'n_head', 'n_embd', 'bias', 'vocab_size'))
    log(f"init_from={init_from}: GPT-2's weights, {n_layer} layers, {n_head} heads, width {n_embd}, "
        f"vocab_size {vocab_size}, bias; these replace the config's")
model_args = asdict(model.config)  # resolved: the preset's switches filled in
model.to(device)
config = {k: globals()[k] for k in config_keys}  # what this run trains with: logged, saved, resumed from
log("config, where not the default (config.json holds all): "
    + json.dumps({k: v for k, v in config.items() if v != defaults[k]}))
log(f"{Model.__name__} with {model.get_num_params() / 1e6:.2f}M parameters; {world_size} process(es), "
    f"{accum_steps} micro-steps of {batch_size} each, {data.samples_per_micro_step * accum_steps * world_size:,} "
    f"{data.unit} per iteration")

# ----------------------------------------------------------------------------------------
# optimizer (model.py's configure_optimizers), compile, DDP, then a resumed run's state into all of them

scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
optimizer = model.configure_optimizers(opt, learning_rate, weight_decay, (beta1, beta2), momentum, nesterov,
                                       device_type)
raw_model = model
if compile:
    log("compiling the model (about a minute)...")
    model = torch.compile(model, dynamic=False)  # static shapes: every batch, train or eval, has one shape
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)
ema = EMA(raw_model, ema_decay) if ema_decay else None  # a copy of the weights, the same on every process now
# a new run: 0, inf, False; evaluated: the eval of iter_num has run
iter_num, best_val_loss, evaluated = run.restore(raw_model, optimizer, scaler, ema)


def all_reduce_sum(t):
    if ddp:
        dist.all_reduce(t)
    return t


def evaluate(net, prefix=''):
    """Mean loss on each of data.eval_splits (text: eval_iters batches of train and val; images: all of val),
    and top-1 for images."""
    net.eval()
    out = {}
    for split in data.eval_splits:
        batches = data.eval_batches(split, rank, world_size)
        loss_sum, correct, count = all_reduce_sum(eval_sums(net, batches, ctx)).tolist()
        out[f'{prefix}{split}_loss'] = loss_sum / count
        if meta['kind'] == 'image':
            out[f'{prefix}{split}_acc'] = correct / count
    net.train()
    return out


def get_lr(it):
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:  # linear warmup; (it + 1) so step 0 does not get lr 0
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def diverged(what, value):
    kept = f"; {run.ckpt_path} is the last good checkpoint" if os.path.exists(run.ckpt_path) else ""
    return ConfigError(f"{what} is {value} at iter {iter_num}; stopping without saving. Lower learning_rate "
                       f"(now {learning_rate}) or raise warmup_iters{kept}")


def save_checkpoint():
    """The state after iteration iter_num (the run adds its generators' states); every process calls it."""
    run.save(dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                  ema=ema.state_dict() if ema is not None else None,  # sample.py uses it where it is there
                  model_args=model_args, model_type=meta['kind'], iter_num=iter_num, best_val_loss=best_val_loss,
                  config=config, evaluated=evaluated, meta=meta))  # meta: sample.py decodes with its tokenizer


# ----------------------------------------------------------------------------------------
# from here on out_dir is written (never under eval_only); SIGTERM or SIGINT: finish the step, save, exit 0

run.start(config)

# ----------------------------------------------------------------------------------------
# training loop

# the host stays ahead of the device: it draws an iteration's batches while the device runs the backward pass
# of the one before, and waits for the device only at log_interval (the loss) and at evals
rows = slice(rank * accum_steps, (rank + 1) * accum_steps)  # this process's micro-batches of each iteration


def next_batches():
    return data.get_batches('train', gradient_accumulation_steps, rows, run.batch_generator())


batches = next_batches()
t0, last_logged = time.time(), iter_num
running_mfu = -1.0
while True:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr

    if eval_only or ((iter_num % eval_interval == 0 or iter_num == max_iters) and not evaluated):
        losses = evaluate(model)
        if ema is not None:
            losses.update(evaluate(ema.module, prefix='ema_'))
        log(f"step {iter_num}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        if eval_only:
            break
        run.write_log(dict(iter=iter_num, lr=lr, **losses))
        evaluated = True
        if not math.isfinite(losses['val_loss']):
            raise diverged('val loss', losses['val_loss'])
        if iter_num > 0 and (losses['val_loss'] < best_val_loss or always_save_checkpoint):
            best_val_loss = min(best_val_loss, losses['val_loss'])
            save_checkpoint()
    if iter_num >= max_iters:
        break

    # forward, backward, update; DDP syncs the gradients on the last micro-step only
    loss_sum = torch.zeros((), device=device)
    for micro_step, (x, y) in enumerate(batches):
        if ddp:
            model.require_backward_grad_sync = micro_step == accum_steps - 1
        with ctx:
            _, loss = model(x, y, **loss_args)
            loss = loss / accum_steps  # the gradient is the mean over micro-steps
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    batches = next_batches()  # on the host, while the device computes
    scaler.unscale_(optimizer)
    if grad_stats_interval and iter_num % grad_stats_interval == 0 and master_process:
        run.write_log(dict(iter=iter_num, grad_stats=grad_stats(raw_model)))
    if grad_clip != 0.0:
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if ema is not None:
        ema.update_parameters(raw_model)  # ema <- ema_decay * ema + (1 - ema_decay) * weights
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    evaluated = False

    stop = run.stop_requested()  # under DDP: every process's vote of the iteration before
    if iter_num % log_interval == 0:  # every process sees the same mean loss
        train_loss = all_reduce_sum(loss_sum.float()).item() / world_size
        if not math.isfinite(train_loss):
            raise diverged('loss', train_loss)
        t1 = time.time()
        dt, t0, last_logged = (t1 - t0) / (iter_num - last_logged), t1, iter_num  # per iteration, since the last log
        throughput = data.samples_per_micro_step * accum_steps * world_size / dt
        mfu = raw_model.estimate_mfu(accum_steps * batch_size, dt)
        if mfu is not None:
            running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
        log(f"iter {iter_num}: loss {train_loss:.4f}, lr {lr:.3e}, time {dt * 1000:.2f}ms, "
            f"{throughput:,.0f} {data.unit}/s" + (f", mfu {running_mfu * 100:.2f}%" if mfu is not None else ""))
        run.write_log(dict(iter=iter_num, loss=train_loss, lr=lr, ms=dt * 1000, throughput=throughput, mfu=mfu))
    if stop:
        log(f"stop requested by signal at iter {iter_num}: saving and exiting")
        save_checkpoint()
        break

run.end()  # wandb's run closed; under DDP, the process group's too
