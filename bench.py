"""
Speed, memory and MFU of one training step (forward, backward, optimizer step) on random data,
for one config or two side by side: DNT vs the standard model, mSGDW vs AdamW, compiled or not.
$ python bench.py config/dnt_gpt2.py
$ python bench.py config/dnt_gpt2.py --compare="opt=adamw,msgdw"
$ python bench.py config/gpt2.py --compare="preset=standard,dnt;opt=adamw,msgdw"
$ python bench.py --model=vit --profile=True --trace=trace.json
$ python bench.py config/dnt_vit_large_imagenet.py --loader=data/imagenet --device=cpu
A step is one micro-batch: gradient_accumulation_steps is ignored. A training iteration of
train.py costs about accumulation x (step - optimizer) + optimizer.
--loader=DATA_DIR times train.py's image pipeline alone instead (images.py's ImageData, streamed from
DATA_DIR at image_size with the config's augmentation, an iteration of gradient_accumulation_steps
micro-batches at a time): images/s read from disk by data_workers threads, and images/s read and
augmented on the device, read ahead as in train.py. No model.
--host=True times train.py's host work of a GPT iteration alone (drawing and copying its micro-batches),
which train.py does while the device runs the iteration before; a GPT run prints it beside the step's time.
"""
import resource
import statistics
import sys
import time
from dataclasses import fields

import torch

from configurator import ConfigError, configure, defaults_of
from devices import autocast, check_device, check_dtype, default_dtype, synchronize
from model import GPT, GPTConfig, ViT, ViTConfig

# ----------------------------------------------------------------------------------------
# default config: train.py's (so that its config files work here; its I/O, data and schedule keys go
# unused), and what bench.py adds or changes
globals().update(defaults_of('train.py'))
model = 'gpt'  # 'gpt' (random token ids) or 'vit' (random images): no dataset, so train.py's image configs need --model=vit
vocab_size = 50304  # train.py's 0 ("the dataset's") has no dataset here: give the number
image_size = 32  # ViT: train.py takes these three from the dataset
in_chans = 3
num_classes = 10
warmup = 5  # untimed steps per variant: compilation, allocator, optimizer state
iters = 20  # timed steps per variant
compare = ''  # 'KEY=A,B': variants A and B, timed interleaved; more keys: 'K1=A,B;K2=C,D'
profile = False  # torch.profiler table over `iters` steps of the config (no compare)
trace = ''  # with profile: write a chrome trace to this path
loader = ''  # a dataset directory: time train.py's image pipeline on it instead of a model step
host = False  # time train.py's host work of an iteration alone (drawing and copying a GPT's batches), no model
# ----------------------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]
try:
    globals().update(configure({k: globals()[k] for k in config_keys}, sys.argv[1:]))
    check_device(device)
    dtype = dtype or default_dtype(device)  # follows the device, as in train.py
    check_dtype(device, dtype)
except ConfigError as e:
    sys.exit(f"bench.py: error: {e}")
config = {k: globals()[k] for k in config_keys}
# ----------------------------------------------------------------------------------------

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True


def time_loader():
    """Images/s of the image pipeline on `loader`: reads alone (no read-ahead), then batches as train.py gets them."""
    from configurator import DataError
    from data import load_meta
    from images import ImageData
    try:
        meta = load_meta(loader)
        data = ImageData(loader, meta, device, batch_size, image_size, augment, crop, crop_padding, rrc_min_scale,
                         flip, mixup, cutmix, True, data_workers, three_augment, color_jitter, random_erasing)
    except DataError as e:
        sys.exit(f"bench.py: {e}")
    gen, n = torch.Generator().manual_seed(seed), gradient_accumulation_steps
    sync = lambda: synchronize(device)
    print(f"loader: {loader}, {meta['train_size']:,} images of {'x'.join(map(str, meta['shape']))} -> {data.size} px, "
          f"{n} x {batch_size} images an iteration, {data_workers} threads, crop={crop} mixup={mixup} "
          f"cutmix={cutmix} three_augment={three_augment} color_jitter={color_jitter} random_erasing={random_erasing}, "
          f"augmented on {device}", flush=True)
    for label, step in (('read', lambda: [wait() for wait, *_ in data.draw('train', n, slice(None), gen)]),
                        (f'read + augment on {device}', lambda: data.get_batches('train', n, slice(None), gen))):
        for _ in range(warmup):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        print(f"{label:<28}{iters * n * batch_size / (time.perf_counter() - t0):>12,.0f} img/s", flush=True)


def host_ms_per_iteration():
    """train.py's host work of an iteration for a GPT: gradient_accumulation_steps micro-batches of batch_size x
    block_size token windows from a token file (random ids, in a temporary directory), copied to the device."""
    import tempfile
    import numpy as np
    from data import TextData
    with tempfile.TemporaryDirectory() as tmp:
        n_tokens = max(1 << 22, 4 * block_size)
        for split in ('train', 'val'):
            np.random.default_rng(0).integers(0, vocab_size, n_tokens, dtype=np.uint16).tofile(f'{tmp}/{split}.bin')
        data = TextData(tmp, dict(vocab_size=vocab_size), device, batch_size, block_size, 1, 0)
        gen, times = torch.Generator().manual_seed(seed), []
        for _ in range(warmup + iters):
            t = time.perf_counter()
            data.get_batches('train', gradient_accumulation_steps, slice(None), gen)
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times[warmup:])


if loader:
    time_loader()
    sys.exit(0)
if host:
    print(f"host: {host_ms_per_iteration():.2f} ms an iteration to draw and copy {gradient_accumulation_steps} "
          f"micro-batches of {batch_size} x {block_size} tokens to {device} (median of {iters})")
    sys.exit(0)
if warmup < 1 or iters < 2:
    sys.exit("bench.py: need warmup >= 1 (it creates the optimizer state) and iters >= 2")
if trace and not profile:
    sys.exit("bench.py: trace is written by the profiler: add --profile=True")
if profile and compare:
    sys.exit("bench.py: profile runs one variant: drop compare")


class Variant:
    """A config's model, optimizer and fixed random batch; step() is train.py's step on it."""

    def __init__(self, cfg):
        self.cfg, self.device = cfg, cfg['device']
        self.cuda = self.device.startswith('cuda')
        device_type = torch.device(self.device).type
        if self.cuda:  # this variant's peak memory: the allocator's high-water mark above what is there now
            torch.cuda.reset_peak_memory_stats(self.device)
            self.memory_before = torch.cuda.memory_allocated(self.device)
        torch.manual_seed(cfg['seed'])  # variants of one architecture get the same weights and data
        B = cfg['batch_size']
        if cfg['model'] == 'gpt':
            if cfg['vocab_size'] < 1:
                sys.exit("bench.py: give vocab_size: train.py's 0 takes the dataset's, and there is none here")
            ModelConfig, Model = GPTConfig, GPT
            self.x = torch.randint(cfg['vocab_size'], (B, cfg['block_size']))
            self.y = torch.randint(cfg['vocab_size'], (B, cfg['block_size']))
            self.samples, self.unit = B * cfg['block_size'], 'tok'
        elif cfg['model'] == 'vit':
            ModelConfig, Model = ViTConfig, ViT
            self.x = torch.randn(B, cfg['in_chans'], cfg['image_size'], cfg['image_size'])
            self.y = torch.randint(cfg['num_classes'], (B,))
            self.samples, self.unit = B, 'img'
        else:
            sys.exit(f"bench.py: unknown model {cfg['model']!r}; choose 'gpt' or 'vit'")
        self.x, self.y = self.x.to(self.device), self.y.to(self.device)
        try:
            field_names = {f.name for f in fields(ModelConfig)}
            self.raw_model = Model(ModelConfig(**{k: v for k, v in cfg.items() if k in field_names})).to(self.device)
            self.opt = self.raw_model.configure_optimizers(cfg['opt'], cfg['learning_rate'], cfg['weight_decay'],
                                                           (cfg['beta1'], cfg['beta2']), cfg['momentum'], cfg['nesterov'], device_type)
        except ValueError as e:
            sys.exit(f"bench.py: {e}")
        self.model = torch.compile(self.raw_model) if cfg['compile'] else self.raw_model
        self.ctx = autocast(self.device, cfg['dtype'])
        self.scaler = torch.amp.GradScaler(device_type, enabled=(cfg['dtype'] == 'float16'))
        self.step_ms, self.opt_ms = [], []

    def mark(self):
        # CUDA: an event on the stream, so that timing the optimizer needs no sync in mid-step
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        synchronize(self.device)  # MPS runs asynchronously too
        return time.perf_counter()

    def ms(self, start, end):
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000

    def step(self):
        """train.py's step on one micro-batch; appends its time and its optimizer step's to step_ms, opt_ms."""
        t0 = self.mark()
        with self.ctx:
            _, loss = self.model(self.x, self.y)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        if self.cfg['grad_clip'] != 0.0:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg['grad_clip'])
        t1 = self.mark()
        self.scaler.step(self.opt)
        t2 = self.mark()
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        t3 = self.mark()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.step_ms.append(self.ms(t0, t3))
        self.opt_ms.append(self.ms(t1, t2))

    def warm_up(self):
        for _ in range(self.cfg['warmup']):
            self.step()
        self.step_ms, self.opt_ms = [], []
        self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self.memory_before) / 2**20 if self.cuda else None
        self.state_bytes = sum(t.numel() * t.element_size() for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t))


# the variants: the config, or the config with each compared key set to its A value, and to its B value;
# built and warmed up one after the other, so that each one's CUDA peak memory is its own
if compare:
    parts = [part.partition('=') for part in compare.split(';')]
    if any(not sep or values.count(',') != 1 for _, sep, values in parts):
        sys.exit(f"bench.py: compare wants 'KEY=A,B' or 'K1=A,B;K2=C,D', got {compare!r}")
    names = ['A', 'B']
    settings = [[f"{key.strip()}={values.split(',')[i].strip()}" for key, _, values in parts] for i in (0, 1)]
    configs = [configure(config, ['--' + s for s in setting]) for setting in settings]
else:
    names, settings, configs = ['bench'], [[]], [config]
variants = []
for name, setting, cfg in zip(names, settings, configs):
    v = Variant(cfg)
    print(f"{name}{' (' + ' '.join(setting) + ')' if setting else ''}: {cfg['model']} preset={cfg['preset']} "
          f"opt={cfg['opt']} {cfg['n_layer']}x{cfg['n_embd']}, {v.samples} {v.unit} per step, "
          f"{cfg['dtype']} on {cfg['device']}, compile={cfg['compile']}", flush=True)
    v.warm_up()
    variants.append(v)

if profile:
    v = variants[0]
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if v.cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(iters):
            v.step()
    print(prof.key_averages().table(sort_by='self_device_time_total' if v.cuda else 'self_cpu_time_total', row_limit=20))
    if trace:
        prof.export_chrome_trace(trace)
        print(f"chrome trace written to {trace}")
    sys.exit(0)

for _ in range(iters):  # interleaved, so that drifts of clock and temperature fall on both alike
    for v in variants:
        v.step()


def mfu(v):
    return None if not v.cuda else v.raw_model.estimate_mfu(v.cfg['batch_size'], statistics.median(v.step_ms) / 1000)


def iqr(times):
    q1, _, q3 = statistics.quantiles(times, n=4)
    return f"{q1:.1f}-{q3:.1f}"


rows = [  # label, a value per variant (None: not known), format; a ratio B/A for numbers
    ('parameters', [v.raw_model.get_num_params(non_embedding=False) for v in variants], '{:,}'),
    ('step ms median', [statistics.median(v.step_ms) for v in variants], '{:.3f}'),
    ('step ms min', [min(v.step_ms) for v in variants], '{:.3f}'),
    ('step ms IQR', [iqr(v.step_ms) for v in variants], '{}'),
    ('optimizer ms median', [statistics.median(v.opt_ms) for v in variants], '{:.3f}'),
    ('optimizer ms min', [min(v.opt_ms) for v in variants], '{:.3f}'),
    (f'{variants[0].unit}/s', [v.samples / statistics.median(v.step_ms) * 1000 for v in variants], '{:,.0f}'),
    ('MFU %', [None if mfu(v) is None else 100 * mfu(v) for v in variants], '{:.2f}'),
    ('peak memory MiB', [v.peak_mib for v in variants], '{:,.1f}'),
    ('optimizer state bytes', [v.state_bytes for v in variants], '{:,}'),
]
print(f"{iters} timed steps each" + (", interleaved A, B, A, B, ..." if compare else ""))
print(f"{'':<22}" + ''.join(f"{name:>16}" for name in names) + (f"{'B/A':>10}" if compare else ""))
for label, values, fmt in rows:
    cells = ''.join(f"{'n/a' if x is None else fmt.format(x):>16}" for x in values)
    ratio = compare and all(isinstance(x, (int, float)) for x in values) and values[0] != 0
    print(f"{label:<22}{cells}" + (f"{values[1] / values[0]:>10.4f}" if ratio else ""))
print("peak memory: each variant's own, from the CUDA allocator; process peak RSS "
      f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:,.1f} MiB (ru_maxrss: every variant together)")


if model == 'gpt':
    v = variants[0]
    host_ms = host_ms_per_iteration()
    # the device's share of an iteration that the host's work can hide behind: the micro-steps' forward and backward
    device_ms = gradient_accumulation_steps * (statistics.median(v.step_ms) - statistics.median(v.opt_ms))
    print(f"host: {host_ms:.2f} ms an iteration to draw and copy {gradient_accumulation_steps} micro-batches of "
          f"{batch_size} x {block_size} tokens (median of {iters}); train.py draws them while the device runs the "
          f"iteration before (about {device_ms:,.1f} ms of forward and backward for {v.cfg['preset']}): "
          + ("the host and the device are one CPU here, so none of it is hidden" if torch.device(v.device).type == 'cpu'
             else f"hidden: {min(1.0, device_ms / host_ms) * 100:.0f}%"))
