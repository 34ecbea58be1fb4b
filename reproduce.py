"""
Does DNT let momentum SGD match AdamW, and at what budget? The paper's experiments at CPU scale:
{standard, DNT} x {AdamW, mSGDW, Muon} on Tiny Shakespeare (char) at a ladder of budgets (Muon up to 1,500),
mSGDW's warmup and momentum, the S1..S5 ablation, {standard, DNT} x {AdamW, mSGDW} on
Fashion-MNIST, and standard + AdamW against DNT + mSGDW on a CIFAR-10 subset with and without
the ImageNet recipe's regularizers. Every cell sweeps its learning rate until the best value is
bracketed and reruns the best setting with more seeds.

$ python reproduce.py --data_root DATA                           # everything: many hours on 2 cores
$ python reproduce.py --data_root DATA --parts=ladder --budgets=400,1500
$ python reproduce.py --data_root DATA --tables_only             # tables and figures from the runs so far
$ python reproduce.py --data_root DATA --quick                   # minutes: a smoke check of the pipeline
DATA holds tinyshakespeare/input.txt, fashion_mnist/fashion_mnist.npz and cifar10_subset/cifar10_subset.npz
(or set NANODNT_DATA). Parts: ladder (LM cells at each of --budgets), warmup (warmup x momentum at the
sweep budget), ablation (S1..S5 at the sweep budget), vision (ViT cells at each of --vision_budgets),
regularizers (drop_path, 3-Augment, random erasing and EMA on the CIFAR-10 subset, all on, all off, each off).

Every finished run is recorded, config, eval curve and all, in <results>/results.json, and a run
found there is not trained again: a stopped reproduction continues where it stopped, even in a
fresh checkout that has only the committed results. A run cut off midway resumes from its
checkpoint under --out. Tables (results.md) and figures go to <results>.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# ----------------------------------------------------------------------------------------
# the setting

WIDTH = 128  # every task's model width; a run at another width (the width study) names it
LM = dict(n_layer=4, n_head=4, n_embd=WIDTH, block_size=64, batch_size=32, eval_interval=100, eval_iters=20, log_interval=100)
VISION = dict(n_layer=4, n_head=4, n_embd=WIDTH, patch_size=7, batch_size=128, crop_padding=2, eval_interval=100, log_interval=100)
# the regularizer study: the CIFAR-10 subset (4,000 train images) at patch 8, where 32 epochs take ~8 minutes here
CIFAR = dict(n_layer=4, n_head=4, n_embd=WIDTH, patch_size=8, batch_size=128, crop_padding=4, label_smoothing=0.1,
             eval_interval=125, log_interval=125)
COMMON = dict(compile=False, device='cpu', dtype='float32', grad_clip=1.0, dropout=0.0, gradient_accumulation_steps=1)
# seeds at or below the sweep budget; long_seeds on the rungs above it (2 at the LM's 5,000, 3 for vision), and at
# the regularizer study's longest budget
SCALES = {
    'full': dict(lm=LM, vision=VISION, cifar=CIFAR, budgets=(400, 1500, 5000), sweep_budget=1500,
                 vision_budgets=(1400, 4200, 12600, 37800), cifar_budgets=(1000, 2000, 3000),
                 first_lrs=3, seeds=3, long_seeds=dict(lm=2, vision=3, cifar=3), max_extensions=3, ablation_lrs=3,
                 widths=(64, 128, 256)),
    'quick': dict(lm={**LM, **dict(n_layer=1, n_embd=32, n_head=2, block_size=32, batch_size=8, eval_interval=10, eval_iters=2)},
                  vision={**VISION, **dict(n_layer=1, n_embd=32, n_head=2, batch_size=16, eval_interval=10)},
                  cifar={**CIFAR, **dict(n_layer=1, n_embd=32, n_head=2, batch_size=16, eval_interval=10)},
                  budgets=(10, 20, 40), sweep_budget=10, vision_budgets=(10,), cifar_budgets=(10, 20), first_lrs=2,
                  seeds=2, long_seeds=dict(lm=2, vision=2, cifar=2), max_extensions=0, ablation_lrs=1, widths=(32, 64)),
}
LR_GRID = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]  # half-decade steps
FIRST_LRS = {'adamw': [1e-3, 3e-3, 1e-2], 'muon': [1e-3, 3e-3, 1e-2], 'msgdw': [0.03, 0.1, 0.3],
             'lion': [1e-4, 3e-4, 1e-3]}  # extended until bracketed
WD_GRID = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # mSGDW's weight decay, swept at its best lr from 1e-4, 1e-3, 1e-2
WEIGHT_DECAY = {'adamw': 0.1, 'muon': 0.1, 'msgdw': 1e-3, 'lion': 1.0}  # AdamW: nanoGPT's; Muon: AdamW's (its update is
# AdamW-scaled); Lion: 10x AdamW's, for an lr about 10x smaller (the Lion paper's advice), so that lr x wd is alike
LION_BETAS = dict(beta1=0.9, beta2=0.99)  # the Lion paper's default
# where a budget judges its cells (the four cells on CIFAR-10): the weight decay swept too, at the best lr
WD_SWEEPS = {'msgdw': (WD_GRID[1:4], 1, WD_GRID), 'adamw': ([0.05, 0.1, 0.3], 0, [0.05, 0.1, 0.3])}  # start, extensions, grid
MIN_LR_RATIO = 0.1  # cosine decay to a tenth of each run's peak learning rate
WARMUP = 0.2  # warmup as a fraction of each run, the same for every cell: the warmup study's best for all four cells
WARMUPS, MOMENTA = (0.02, 0.07, 0.2), (0.9, 0.95)  # the warmup study
STUDY_WARMUP = 0.07  # the study runs each cell at its best lr and wd found with this warmup (the ladder's first choice)
CELLS = {'lm': [(p, o) for o in ('adamw', 'msgdw', 'muon') for p in ('standard', 'dnt')],
         'vision': [(p, o) for o in ('adamw', 'msgdw') for p in ('standard', 'dnt')]}
CELLS['cifar'] = CELLS['vision']
WIDTH_CELLS = [('standard', 'adamw'), ('dnt', 'msgdw'), ('standard', 'msgdw')]  # the gap against width
LION_CELLS = [('standard', 'lion'), ('dnt', 'lion')]
HEAD_DIM = 32  # the width study scales the heads with the width
ABLATION = {'S1 standard': dict(preset='standard'), 'S2 +QKNorm': dict(preset='s2'), 'S3 +InputNorm': dict(preset='s3'),
            'S4 +MidNorm, both PreNorms': dict(preset='s4'), 'S5 DNT (LayerNorm)': dict(preset='dnt'),
            'S5 DNT (RMSNorm)': dict(preset='dnt', norm='rmsnorm')}
# each regularizer's setting in the study; EMA does not change training: 'no EMA' is every run's raw weights
REGULARIZERS = {'drop_path': dict(drop_path=0.1), '3-Augment': dict(three_augment=True, color_jitter=0.3),
                'random erasing': dict(random_erasing=0.25), 'EMA': dict(ema_decay=0.99)}
NO_REGULARIZERS = dict(drop_path=0.0, three_augment=False, color_jitter=0.0, random_erasing=0.0, ema_decay=0.0)
REGULARIZED_CELLS = [('standard', 'adamw'), ('dnt', 'msgdw')]
REGULARIZED_LRS = {'adamw': [3e-4, 1e-3, 3e-3], 'msgdw': [0.01, 0.03, 0.1]}  # around the Fashion-MNIST ladder's best
PARTS = dict(ladder=('lm',), warmup=('lm',), ablation=('lm',), vision=('vision',), regularizers=('cifar',),
             cells=('cifar',), width=('lm', 'cifar'), lion=('lm', 'cifar'))  # each part's tasks
SOURCES = dict(lm=('shakespeare_char', 'tinyshakespeare/input.txt'), vision=('npz', 'fashion_mnist/fashion_mnist.npz'),
               cifar=('npz', 'cifar10_subset/cifar10_subset.npz'))  # each task's prepare_data.py dataset, under DATA
SEED = 1337
TRAIN_IMAGES = {'full': 60000}  # Fashion-MNIST, for epochs in the tables
CIFAR_TRAIN_IMAGES = 4000

# ----------------------------------------------------------------------------------------
# running train.py and recording each run

class MissingRun(Exception):
    pass


def read_log(out_dir):
    path = os.path.join(out_dir, 'log.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def grad_summary(record):
    """One grad_stats log record -> the median over weight matrices of its tail statistics, and the histograms."""
    tensors = record['grad_stats']['tensors'].values()
    return dict(iter=record['iter'], hist=record['grad_stats']['hist'],
                p999_over_median=float(np.median([t['p999_over_median'] for t in tensors])),
                kurtosis=float(np.median([t['kurtosis'] for t in tensors])))


def run_record(log, config, diverged, wall_s):
    evals = [r for r in log if 'val_loss' in r]
    return dict(config=config, diverged=diverged, wall_s=round(wall_s, 1),
                ms_per_iter=float(np.median([r['ms'] for r in log if 'ms' in r] or [math.nan])),
                curve=[[r['iter'], r['val_loss'], r.get('val_acc'), r.get('train_loss')] for r in evals],
                best_val_loss=min([r['val_loss'] for r in evals] + [math.inf]) if not diverged else math.inf,
                final_val_loss=evals[-1]['val_loss'] if evals and not diverged else math.inf,
                best_val_acc=max([r.get('val_acc') or 0.0 for r in evals] + [0.0]) if not diverged else 0.0,
                final_val_acc=(evals[-1].get('val_acc') or 0.0) if evals and not diverged else 0.0,
                grad_stats=[grad_summary(r) for r in log if 'grad_stats' in r])


def write_json(path, report):
    """results.json with one line per run, so that a new run is a one-line diff."""
    lines = []
    for key, value in report.items():
        if key == 'runs':
            body = ',\n'.join(f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in sorted(value.items()))
            lines.append(f'"runs": {{\n{body}\n}}')
        else:
            lines.append(f'{json.dumps(key)}: {json.dumps(value, indent=1)}')
    with open(path + '.tmp', 'w') as f:
        f.write('{\n' + ',\n'.join(lines) + '\n}\n')
    os.replace(path + '.tmp', path)


class Runner:
    """Runs train.py, `jobs` processes at a time (sweeps call it from their own threads), and records
    every finished run in results.json; a run already recorded is returned without training."""

    def __init__(self, out, results_path, data_dirs, jobs, train=True):
        self.out, self.results_path, self.data_dirs, self.train = out, results_path, data_dirs, train
        self.slots, self.lock, self.jobs = threading.Semaphore(jobs), threading.Lock(), jobs
        self.name_locks = {}  # one per run: a run asked for twice at once trains once
        self.part = None  # recorded with each run this runner trains, for the wall time of each part
        self.report = {}
        if os.path.exists(results_path):
            with open(results_path) as f:
                self.report = json.load(f)
        self.runs = self.report.setdefault('runs', {})

    def run(self, name, args):
        with self.lock:
            name_lock = self.name_locks.setdefault(name, threading.Lock())
        with name_lock:
            if name in self.runs:
                if self.runs[name]['config'] != args:
                    raise SystemExit(f"reproduce.py: {name} is recorded in {self.results_path} with another config")
                return self.runs[name]
            return self.train_run(name, args)

    def train_run(self, name, args):
        if not self.train:
            raise MissingRun(name)
        out_dir = os.path.join(self.out, name)
        os.makedirs(out_dir, exist_ok=True)
        resume = os.path.exists(os.path.join(out_dir, 'ckpt.pt'))
        with self.slots, open(os.path.join(out_dir, 'train.log'), 'a') as f:
            start = time.time()
            code = subprocess.run(self.command(args, out_dir, init_from='resume' if resume else 'scratch'),
                                  stdout=f, stderr=subprocess.STDOUT, env=self.env()).returncode
            wall_s = time.time() - start
        # a run cut by a session's end kept no time of its earlier segments: scale the last one to the whole run
        log = read_log(out_dir)
        resumed_from = max((r['iter'] for r in log if 'resume' in r), default=0)
        if resumed_from < args['max_iters']:  # (cut after its last step, only the final eval is left to time)
            wall_s *= args['max_iters'] / (args['max_iters'] - resumed_from)
        with open(os.path.join(out_dir, 'train.log')) as f:
            diverged = code != 0 and 'loss is' in f.read()  # train.py stops on a NaN/Inf loss
        if code != 0 and not diverged:
            raise SystemExit(f"reproduce.py: {name} failed (exit {code}); see {out_dir}/train.log")
        if not diverged and not any(r['iter'] == args['max_iters'] and 'val_loss' in r for r in log):
            raise SystemExit(f"reproduce.py: {name} stopped before its final eval (a signal?); run again to resume it")
        record = {**run_record(log, args, diverged, wall_s), 'part': self.part, 'resumed_from': resumed_from}
        if args['task'] == 'cifar' and not diverged:
            record['ema_curve'] = [[r['iter'], r['ema_val_loss'], r['ema_val_acc']] for r in log if 'ema_val_loss' in r]
            record['train_scores'] = train_scores(out_dir, ema=bool(args['ema_decay']))
        with self.lock:
            self.runs[name] = record
            write_json(self.results_path, self.report)
        task = args['task']
        print(f"{name}: " + ('diverged' if diverged else f"{metric_name(task)} {metric(task, record):.4f}, {wall_s / 60:.1f} min"),
              flush=True)
        return record

    def run_all(self, named_args):
        return parallel(lambda item: self.run(*item), named_args.items())

    def command(self, args, out_dir, **extra):
        train_args = {**{k: v for k, v in args.items() if k != 'task'}, 'data_dir': self.data_dirs[args['task']],
                      'out_dir': out_dir, **extra}
        return [sys.executable, 'train.py', *[f'--{k}={v!r}' if isinstance(v, str) else f'--{k}={v}' for k, v in train_args.items()]]

    def env(self):
        return dict(os.environ, OMP_NUM_THREADS=str(self.threads))

    @property
    def threads(self):
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def check(self, spec):
        """Train the recorded run `spec` (NAME or NAME@ITERS: its first ITERS iterations, the schedule unchanged) again
        in <out>/check/NAME, and compare its evals with the record's, number for number; True where all are equal."""
        name, _, iters = spec.partition('@')
        record = self.runs[name]
        args = {**record['config'], 'max_iters': int(iters or record['config']['max_iters'])}
        out_dir = os.path.join(self.out, 'check', name)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, 'train.log'), 'w') as f:
            subprocess.run(self.command(args, out_dir, init_from='scratch', overwrite=True), stdout=f,
                           stderr=subprocess.STDOUT, env=self.env(), check=True)
        want = [c for c in record['curve'] if c[0] <= args['max_iters']]
        got = {c[0]: c for c in run_record(read_log(out_dir), args, False, 0)['curve']}
        differ = [(c, got.get(c[0])) for c in want if got.get(c[0]) != c]
        where = f"{name} to iter {args['max_iters']} ({self.threads} thread(s) a run)"
        if differ:
            print(f"{where}: differs from the record at iter {differ[0][0][0]}: recorded {differ[0][0][1:]}, now "
                  f"{differ[0][1] and differ[0][1][1:]} (iteration, then val loss, top-1, train loss)")
        else:
            print(f"{where}: equal to the record at every eval ({', '.join(str(c[0]) for c in want)})")
        return not differ


def train_scores(out_dir, ema):
    """Top-1 and loss of a run's final weights (and of their EMA) on its training images as eval sees them
    (no augmentation): with the val numbers, the train/val gap."""
    scores = {}
    for use_ema in (False, True) if ema else (False,):
        out = subprocess.run([sys.executable, 'sample.py', f'--out_dir={out_dir}', '--split=train', '--device=cpu',
                              f'--ema={use_ema}'], capture_output=True, text=True, check=True).stdout
        acc, loss = re.search(r'on train: ([\d.]+)% .* loss ([\d.]+)', out).groups()
        scores['ema' if use_ema else 'raw'] = dict(acc=float(acc) / 100, loss=float(loss))
    return scores


def parallel(fn, items):
    """fn over items in threads; the runner's slots bound how many train.py processes run at once."""
    items = list(items)
    with ThreadPoolExecutor(max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def run_name(args):
    name = f"{args['task']}{args['max_iters']}_{args['preset']}_{args['opt']}_lr{args['learning_rate']:g}_wd{args['weight_decay']:g}"
    name += f"_wu{args['warmup_iters'] / args['max_iters']:.2g}"
    name += f"_m{args['momentum']:g}" if args['opt'] == 'msgdw' and args['momentum'] != 0.9 else ''
    name += '_rmsnorm' if args.get('norm') == 'rmsnorm' else ''
    name += f"_w{args['n_embd']}" if args.get('n_embd', WIDTH) != WIDTH else ''
    if args['task'] == 'cifar':
        codes = dict(drop_path='dp', three_augment='3a', random_erasing='re', ema_decay='ema')
        name += '_reg-' + ('-'.join(code for key, code in codes.items() if args[key]) or 'none')
    return name + f"_s{args['seed']}"


def with_budget(base, budget, warmup=WARMUP):
    """A run of `budget` iterations: cosine over the whole run, warmup a fixed fraction of it."""
    return {**base, 'max_iters': budget, 'lr_decay_iters': budget, 'warmup_iters': round(warmup * budget),
            'grad_stats_interval': budget // 2}


def finalize(args):
    return {**args, 'min_lr': args['learning_rate'] * MIN_LR_RATIO}


def metric(task, record):
    """The ladder's: the best over a run's evals; the regularizer study's: the final weights' (overfitting shows)."""
    return record[dict(lm='best_val_loss', vision='best_val_acc', cifar='final_val_acc')[task]]


def metric_name(task):
    return dict(lm='best val loss', vision='best val top-1', cifar='final val top-1')[task]


def score(task, record):
    """Higher is better: accuracy for images, minus the loss for language."""
    if record['diverged']:
        return -math.inf
    return -metric(task, record) if task == 'lm' else metric(task, record)


def sweep(runner, base, key, values, max_extensions, grid):
    """Run base with each value of key; while the best sits at an end of the sweep, extend it
    one grid step past that end. Returns {value: record} and the best value."""
    values, results = list(values), {}
    for _ in range(max_extensions + 1):
        todo = {run_name(finalize({**base, key: v})): finalize({**base, key: v}) for v in values if v not in results}
        for args, record in zip(todo.values(), runner.run_all(todo)):
            results[args[key]] = record
        ordered = sorted(results)
        best = max(ordered, key=lambda v: score(base['task'], results[v]))
        i = grid.index(best)
        if best == ordered[0] and i > 0:
            values = [grid[i - 1]]
        elif best == ordered[-1] and i + 1 < len(grid):
            values = [grid[i + 1]]
        else:
            break
    return results, best


def seeds_of(runner, args, n):
    """The run at args with seeds SEED .. SEED + n - 1, and the metric's mean and std."""
    named = {run_name(finalize({**args, 'seed': SEED + i})): finalize({**args, 'seed': SEED + i}) for i in range(n)}
    records = runner.run_all(named)
    values = [metric(args['task'], r) for r in records]
    return dict(runs=list(named), per_seed=values, mean=float(np.mean(values)),
                std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


def short(records, task):
    return {f'{v:g}': metric(task, r) if not r['diverged'] else None for v, r in sorted(records.items())}

# ----------------------------------------------------------------------------------------
# the experiments

def run_cell(runner, ctx, task, budget, preset, optimizer, warmup=WARMUP):
    """One cell at one budget, warmup a fraction of the run. At or below the sweep budget: the lr sweep
    from FIRST_LRS until bracketed, mSGDW's weight decay swept at the best lr, then seeds. Above it: the
    rung below's best lr and its two grid neighbours, extended until bracketed (mSGDW at the rung below's
    weight decay), then seeds."""
    scale = ctx['scale']
    base = with_budget({**ctx['bases'][task], 'preset': preset, 'opt': optimizer,
                        'weight_decay': WEIGHT_DECAY[optimizer]}, budget, warmup)
    sweep_budget = ctx['sweep_budget'][task]
    if budget <= sweep_budget:
        lrs, best_lr = sweep(runner, base, 'learning_rate', FIRST_LRS[optimizer][:scale['first_lrs']], scale['max_extensions'], LR_GRID)
        n_seeds = scale['seeds']
    else:
        below = max(b for b in ctx['rungs'][task] if b < budget)
        ref = run_cell(runner, ctx, task, below, preset, optimizer, warmup)
        i = LR_GRID.index(ref['best_lr'])
        base['weight_decay'] = ref['best_wd']
        lrs, best_lr = sweep(runner, base, 'learning_rate', LR_GRID[max(0, i - 1):i + 2], scale['max_extensions'], LR_GRID)
        n_seeds = scale['long_seeds'][task]
    base['learning_rate'] = best_lr
    wds = {base['weight_decay']: lrs[best_lr]}
    if optimizer == 'msgdw' and budget <= sweep_budget:
        wds, best_wd = sweep(runner, base, 'weight_decay', WD_GRID[1:4], 1, WD_GRID)
        base['weight_decay'] = best_wd
    return dict(budget=budget, best_lr=best_lr, best_wd=base['weight_decay'], lr_sweep=short(lrs, task),
                wd_sweep=short(wds, task), **seeds_of(runner, base, n_seeds))


def ladder(runner, ctx, task, budgets):
    """Every cell at every budget (Muon up to the sweep budget); for tables, a cell whose runs are not all
    recorded yet is left out."""
    def cell_if_recorded(cell):
        try:
            return run_cell(runner, ctx, task, *cell)
        except MissingRun:
            return None
    # Muon runs up to the sweep budget only: torch's Muon orthogonalizes in bfloat16, and a CPU without
    # AVX-512 BF16 runs that ~30x slower than float32 (a 5,000-iteration Muon run: over an hour here)
    cells = [(b, p, o) for b in budgets for p, o in CELLS[task] if o != 'muon' or b <= ctx['sweep_budget'][task]]
    results = parallel(cell_if_recorded, cells)
    return {f'{b}/{p}+{o}': r for (b, p, o), r in zip(cells, results) if r is not None}


def warmup_study(runner, ctx):
    """At the sweep budget, the ladder's cells with STUDY_WARMUP (the anchors); then each AdamW and mSGDW
    cell at its anchor's best lr and wd with warmup 2/7/20 % of the run, mSGDW also with momentum 0.95. One seed."""
    budget = ctx['scale']['sweep_budget']
    anchors = dict(zip([f'{budget}/{p}+{o}' for p, o in CELLS['lm']],
                       parallel(lambda c: run_cell(runner, ctx, 'lm', budget, *c, STUDY_WARMUP), CELLS['lm'])))

    def study(cell):
        preset, optimizer = cell
        best = anchors[f'{budget}/{preset}+{optimizer}']
        base = {**ctx['bases']['lm'], 'preset': preset, 'opt': optimizer, 'learning_rate': best['best_lr'],
                'weight_decay': best['best_wd'], 'seed': SEED}
        grid = [(w, m) for w in WARMUPS for m in (MOMENTA if optimizer == 'msgdw' else MOMENTA[:1])]
        named = {}
        for w, m in grid:
            args = finalize({**with_budget(base, budget, w), 'momentum': m})
            named[run_name(args)] = args
        records = runner.run_all(named)
        return {f'{w:g}/{m:g}': metric('lm', r) if not r['diverged'] else None for (w, m), r in zip(grid, records)}

    cells = [c for c in CELLS['lm'] if c[1] != 'muon']
    return dict(anchors=anchors, tables=dict(zip([f'{p}+{o}' for p, o in cells], parallel(study, cells))))


def ablation(runner, ctx):
    """S1..S5 with mSGDW at the sweep budget, each at its own best lr (DNT's weight decay), one seed."""
    scale, budget = ctx['scale'], ctx['scale']['sweep_budget']
    dnt = run_cell(runner, ctx, 'lm', budget, 'dnt', 'msgdw')
    i = LR_GRID.index(dnt['best_lr'])
    start = LR_GRID[max(0, i - scale['ablation_lrs'] // 2):][:scale['ablation_lrs']]

    def ablate(switches):
        args = with_budget({**ctx['bases']['lm'], 'opt': 'msgdw', 'weight_decay': dnt['best_wd'], **switches}, budget)
        lrs, best_lr = sweep(runner, args, 'learning_rate', start, scale['max_extensions'], LR_GRID)
        name = run_name(finalize({**args, 'learning_rate': best_lr}))
        return dict(best_lr=best_lr, best_val_loss=lrs[best_lr]['best_val_loss'], run=name, lr_sweep=short(lrs, 'lm'),
                    grad_tail=[{k: g[k] for k in ('iter', 'p999_over_median', 'kurtosis')} for g in lrs[best_lr]['grad_stats']])
    return dict(zip(ABLATION, parallel(ablate, ABLATION.values())))


def regularizers(runner, ctx):
    """Standard + AdamW and DNT + mSGDW on the CIFAR-10 subset with every regularizer on, with none, and with each
    one off in turn, at the first of cifar_budgets. The lr is swept with all on (one seed); every variant runs at
    that lr; all on and all off with more seeds, at the longer budgets with one, and at the longest with long_seeds.
    In that order: one seed of every variant, the longer budgets, the other seeds, the longest budget's other seeds,
    so that a stopped study has whole tables."""
    scale, (budget, *longer) = ctx['scale'], ctx['scale']['cifar_budgets']
    all_on = {k: v for keys in REGULARIZERS.values() for k, v in keys.items()}

    def variants(cell):
        preset, optimizer = cell
        on = with_budget({**ctx['bases']['cifar'], 'preset': preset, 'opt': optimizer,
                          'weight_decay': WEIGHT_DECAY[optimizer], **all_on}, budget)
        lrs, best_lr = sweep(runner, on, 'learning_rate', REGULARIZED_LRS[optimizer][:scale['first_lrs']], 1, LR_GRID)
        on['learning_rate'] = best_lr
        named = {'all on': on, 'all off': {**on, **NO_REGULARIZERS}}
        named.update({f'no {name}': {**on, **{k: NO_REGULARIZERS[k] for k in keys}}
                      for name, keys in REGULARIZERS.items() if name != 'EMA'})
        parallel(lambda args: seeds_of(runner, args, 1), named.values())  # the cell's table at one seed
        return best_lr, lrs, named

    swept = parallel(variants, REGULARIZED_CELLS)
    jobs = [(f'{p}+{o}', name, args) for (p, o), (_, _, named) in zip(REGULARIZED_CELLS, swept) for name, args in named.items()]
    long_jobs = [(cell, f'{name}, {b:,} iterations', with_budget(args, b)) for b in longer
                 for cell, name, args in jobs if name in ('all on', 'all off')]
    long_seeded = parallel(lambda job: seeds_of(runner, job[2], 1), long_jobs)
    seeded = parallel(lambda job: seeds_of(runner, job[2], scale['seeds'] if job[1] in ('all on', 'all off') else 1), jobs)
    results = {job[:2]: result for job, result in zip(jobs + long_jobs, seeded + long_seeded)}
    longest = [job for job in long_jobs if job[2]['max_iters'] == longer[-1]]
    for n in range(2, scale['long_seeds']['cifar'] + 1):  # the longest budget's other seeds, one seed at a time
        more = parallel(lambda job: seeds_of(runner, job[2], n), longest)
        results.update({job[:2]: result for job, result in zip(longest, more)})
    out = {f'{p}+{o}': dict(best_lr=best_lr, lr_sweep=short(lrs, 'cifar'), variants={})
           for (p, o), (best_lr, lrs, _) in zip(REGULARIZED_CELLS, swept)}
    for (cell, name), result in results.items():
        out[cell]['variants'][name] = result
    return out


def tune(runner, scale, base, first_lrs, n_seeds):
    """A cell tuned where its budget judges it: the lr swept until bracketed; the weight decay swept at the best lr
    (WD_SWEEPS); where the best weight decay moved, the lr again from the best and its neighbours; then seeds."""
    lrs, best_lr = sweep(runner, base, 'learning_rate', first_lrs, scale['max_extensions'], LR_GRID)
    base, wds, lrs_again = {**base, 'learning_rate': best_lr}, {base['weight_decay']: lrs[best_lr]}, {}
    if base['opt'] in WD_SWEEPS:
        values, extensions, grid = WD_SWEEPS[base['opt']]
        wds, best_wd = sweep(runner, base, 'weight_decay', values, extensions, grid)
        if score(base['task'], wds[best_wd]) > score(base['task'], wds[base['weight_decay']]):  # a tie keeps the lr's wd
            base['weight_decay'] = best_wd
            i = LR_GRID.index(best_lr)
            lrs_again, best_lr = sweep(runner, base, 'learning_rate', LR_GRID[max(0, i - 1):i + 2], scale['max_extensions'], LR_GRID)
            base['learning_rate'] = best_lr
    return dict(budget=base['max_iters'], best_lr=best_lr, best_wd=base['weight_decay'], lr_sweep=short(lrs, base['task']),
                wd_sweep=short(wds, base['task']), lr_sweep_at_best_wd=short(lrs_again, base['task']),
                **seeds_of(runner, base, n_seeds))


def cifar_base(ctx, preset, optimizer, width=WIDTH):
    """A cell on the CIFAR-10 subset at the regularizer study's longest budget, the regularizers off."""
    return with_budget({**ctx['bases']['cifar'], 'preset': preset, 'opt': optimizer, **NO_REGULARIZERS,
                        'weight_decay': WEIGHT_DECAY[optimizer], **at_width(ctx['bases']['cifar'], width),
                        **(LION_BETAS if optimizer == 'lion' else {})}, ctx['scale']['cifar_budgets'][-1])


def at_width(base, width):
    """Depth as it is, heads scaled with the width (HEAD_DIM each, as at the default width)."""
    return dict(n_embd=width, n_head=max(1, width * base['n_head'] // base['n_embd']))


def four_cells(runner, ctx):
    """The four cells on the CIFAR-10 subset at the longest budget, regularizers off, each tuned there (tune)."""
    scale = ctx['scale']
    first = {'adamw': REGULARIZED_LRS['adamw'], 'msgdw': REGULARIZED_LRS['msgdw']}
    cells = CELLS['cifar']
    tuned = parallel(lambda c: tune(runner, scale, cifar_base(ctx, *c), first[c[1]], scale['long_seeds']['cifar']), cells)
    return {f"{scale['cifar_budgets'][-1]}/{p}+{o}": t for (p, o), t in zip(cells, tuned)}


def width_study(runner, ctx, task):
    """Standard + AdamW, DNT + mSGDW and standard + mSGDW at each width. At the task's own width the tuned cells
    (the ladder's at the sweep budget, or four_cells); at the others the lr swept from that width's best and its
    neighbours, at its weight decay, one seed, and more seeds for two cells that end within twice their seed spread
    at the tuned width."""
    scale, base_width = ctx['scale'], ctx['bases'][task]['n_embd']
    if task == 'lm':
        tuned = dict(zip(WIDTH_CELLS, parallel(lambda c: run_cell(runner, ctx, 'lm', scale['sweep_budget'], *c), WIDTH_CELLS)))
    else:
        cells = four_cells(runner, ctx)
        tuned = {(p, o): cells[f"{scale['cifar_budgets'][-1]}/{p}+{o}"] for p, o in WIDTH_CELLS}

    def point(job):
        width, (preset, optimizer) = job
        ref = tuned[(preset, optimizer)]
        if width == base_width:
            return ref
        if task == 'lm':
            base = with_budget({**ctx['bases']['lm'], 'preset': preset, 'opt': optimizer}, scale['sweep_budget'])
            base.update(at_width(ctx['bases']['lm'], width))
        else:
            base = cifar_base(ctx, preset, optimizer, width)
        base['weight_decay'] = ref['best_wd']
        i = LR_GRID.index(ref['best_lr'])
        lrs, best_lr = sweep(runner, base, 'learning_rate', LR_GRID[max(0, i - 1):i + 2], scale['max_extensions'], LR_GRID)
        return dict(best_lr=best_lr, best_wd=ref['best_wd'], lr_sweep=short(lrs, task), base={**base, 'learning_rate': best_lr},
                    **seeds_of(runner, {**base, 'learning_rate': best_lr}, 1))

    jobs = [(w, c) for w in scale['widths'] for c in WIDTH_CELLS]
    points = dict(zip(jobs, parallel(point, jobs)))
    # seeds where two cells end within twice their seed spread at the tuned width
    close = set()
    for w in scale['widths']:
        for i, a in enumerate(WIDTH_CELLS):
            for b in WIDTH_CELLS[i + 1:]:
                spread = 2 * math.hypot(tuned[a]['std'], tuned[b]['std'])
                if w != base_width and abs(points[(w, a)]['mean'] - points[(w, b)]['mean']) <= spread:
                    close |= {(w, a), (w, b)}
    seeded = parallel(lambda job: seeds_of(runner, points[job]['base'], scale['long_seeds']['cifar']), sorted(close))
    for job, result in zip(sorted(close), seeded):
        points[job].update(result)
    return {f'{w}/{p}+{o}': {k: v for k, v in c.items() if k != 'base'} for (w, (p, o)), c in points.items()}


def if_recorded(what, study):
    """study(), or None where one of its runs is not recorded yet (the tables of a study still running)."""
    try:
        return study()
    except MissingRun as e:
        print(f"{what}: not complete yet (no record of {e}); its tables wait for it")


def by_task(part, study):
    """{task: study(task)} for each of the part's tasks whose runs are all recorded, so that one task's tables do
    not wait for the other's runs."""
    done = {task: if_recorded(f'{part}, {task}', lambda: study(task)) for task in PARTS[part]}
    return {task: result for task, result in done.items() if result is not None}


def lion_cells(runner, ctx, task):
    """Standard + Lion and DNT + Lion, the lr swept until bracketed at Lion's weight decay, then seeds: on the LM at
    the sweep budget, on the CIFAR-10 subset as four_cells."""
    scale = ctx['scale']
    if task == 'lm':
        bases = [with_budget({**ctx['bases']['lm'], 'preset': p, 'opt': o, 'weight_decay': WEIGHT_DECAY[o], **LION_BETAS},
                             scale['sweep_budget']) for p, o in LION_CELLS]
    else:
        bases = [cifar_base(ctx, p, o) for p, o in LION_CELLS]
    n_seeds = scale['seeds'] if task == 'lm' else scale['long_seeds']['cifar']
    tuned = parallel(lambda base: tune(runner, scale, base, FIRST_LRS['lion'][:scale['first_lrs']], n_seeds), bases)
    return {f"{base['max_iters']}/{p}+{o}": t for base, (p, o), t in zip(bases, LION_CELLS, tuned)}


def memory_table():
    """Exact optimizer-state bytes of GPT-2 124M (vocab 50304) after one step with each optimizer. On the
    meta device: every state tensor's shape and dtype, none of the arithmetic (on a CPU, Muon's bfloat16
    orthogonalization of 124M takes minutes a step)."""
    import torch
    from model import GPT, GPTConfig
    with torch.device('meta'):
        model = GPT(GPTConfig(preset='dnt'))
    table = {}
    for optimizer in ('adamw', 'msgdw', 'muon'):
        opt = model.configure_optimizers(optimizer, 1e-3, 0.0)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        table[optimizer] = sum(t.numel() * t.element_size() for state in opt.state.values()
                               for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    table['params'] = model.get_num_params(non_embedding=False)
    return table


# ----------------------------------------------------------------------------------------
# tables and figures

CELL_NAMES = {'standard+adamw': 'standard + AdamW', 'dnt+adamw': 'DNT + AdamW', 'standard+msgdw': 'standard + mSGDW',
              'dnt+msgdw': 'DNT + mSGDW', 'standard+muon': 'standard + Muon', 'dnt+muon': 'DNT + Muon',
              'standard+lion': 'standard + Lion', 'dnt+lion': 'DNT + Lion'}
COLORS = {'standard+adamw': 'tab:red', 'dnt+adamw': 'tab:blue', 'standard+msgdw': 'tab:orange', 'dnt+msgdw': 'tab:cyan',
          'standard+muon': 'tab:brown', 'dnt+muon': 'tab:green'}
GAP_UNITS = {'lm': 'nats of val loss; + is worse', 'vision': 'points of val top-1; − is worse'}
GAP_UNITS['cifar'] = 'points of final val top-1; − is worse'
GAP_SCALE, GAP_DIGITS = {'lm': 1, 'vision': 100, 'cifar': 100}, {'lm': 3, 'vision': 2, 'cifar': 2}  # images: points of top-1
TASK_TITLES = {'lm': 'Tiny Shakespeare char GPT', 'vision': 'Fashion-MNIST ViT', 'cifar': 'CIFAR-10 subset ViT'}
# the paper's table (standard + AdamW, DNT + AdamW, standard + mSGDW, DNT + mSGDW): for the gap fraction beside ours
PAPER = {'ViT-L 307M, ImageNet top-1': (81.7, 82.1, 78.2, 81.5), 'ViT-H 632M, ImageNet top-1': (80.8, 81.9, 73.5, 81.2),
         'GPT-2 124M, OpenWebText val loss': (2.867, 2.863, 2.906, 2.849),
         'GPT-2 774M, OpenWebText val loss': (2.492, 2.481, 2.544, 2.503), '1.4B, OpenWebText val loss': (2.435, 2.396, 2.472, 2.408)}


def gap_closed(std_adamw, std_msgdw, dnt_msgdw):
    """The fraction of mSGDW's gap to AdamW (on the standard model) that DNT closes: 1 closes it, above 1 passes
    AdamW, 0 is no better than standard + mSGDW. A ratio of differences: the same for losses and accuracies."""
    return (std_msgdw - dnt_msgdw) / (std_msgdw - std_adamw)


GAP_CELLS = ('standard+adamw', 'standard+msgdw', 'dnt+msgdw')  # gap_closed's arguments, in order


def cells_gap_closed(cells, prefix=''):
    """gap_closed from the seed means of the cells keyed prefix + each of GAP_CELLS."""
    return gap_closed(*(cells[prefix + c]['mean'] for c in GAP_CELLS))


def by_budget(cells):
    """'1500/dnt+msgdw' -> {1500: {'dnt+msgdw': cell}}, budgets ascending."""
    out = {}
    for key, cell in cells.items():
        budget, name = key.split('/')
        out.setdefault(int(budget), {})[name] = cell
    return dict(sorted(out.items()))


def gaps_to_adamw(cells):
    """{cell: [(budget, mean - standard + AdamW's mean, hypot of the two seed stds)]} at each budget that has both."""
    out = {}
    for b, cs in by_budget(cells).items():
        if ref := cs.get('standard+adamw'):
            for name, c in cs.items():
                if name != 'standard+adamw':
                    out.setdefault(name, []).append((b, c['mean'] - ref['mean'], math.hypot(c['std'], ref['std'])))
    return out


def fmt(task, value, digits=3):
    if value is None or not math.isfinite(value):
        return 'diverged'
    return f'{value:.{digits}f}' if task == 'lm' else f'{100 * value:.{digits - 2}f}%'


def fmt_cell(task, c):
    return f"{fmt(task, c['mean'])} ± {fmt(task, c['std'])}"


def fmt_sweep(task, sweep):
    return ', '.join(f'{v}: {fmt(task, m)}' for v, m in sweep.items())


def cell_tables(task, cells, lines, unit):
    """The cells x budgets table, then each budget's sweeps."""
    budgets = by_budget(cells)
    names = [f'{p}+{o}' for p, o in CELLS[task]]
    lines += [f'| cell | ' + ' | '.join(f'{b:,} iters ({unit(b)})' for b in budgets) + ' |', '|---' * (len(budgets) + 1) + '|']
    for name in names:
        row = [f"{fmt_cell(task, c)} (n={len(c['per_seed'])}; lr {c['best_lr']:g}" + (f", wd {c['best_wd']:g})" if 'msgdw' in name or len(c['wd_sweep']) > 1 else ')')
               if (c := budgets[b].get(name)) else '' for b in budgets]
        lines.append(f'| {CELL_NAMES[name]} | ' + ' | '.join(row) + ' |')
    if gaps := gaps_to_adamw(cells):
        lines += ['', f'| gap to standard + AdamW ({GAP_UNITS[task]}) | ' + ' | '.join(f'{b:,}' for b in budgets) + ' |',
                  '|---' * (len(budgets) + 1) + '|']
        scale = GAP_SCALE[task]
        for name in names[1:]:
            at = {b: (g, e) for b, g, e in gaps.get(name, [])}
            row = [f'{scale * at[b][0]:+.{GAP_DIGITS[task]}f} ± {scale * at[b][1]:.{GAP_DIGITS[task]}f}' if b in at else '' for b in budgets]
            lines.append(f'| {CELL_NAMES[name]} | ' + ' | '.join(row) + ' |')
    for b, cs in budgets.items():
        lines += ['', f'Sweeps at {b:,} iterations ({metric_name(task)}, seed {SEED}):', '']
        for name, c in cs.items():
            text = f"- {CELL_NAMES[name]}: lr {fmt_sweep(task, c['lr_sweep'])}"
            if len(c['wd_sweep']) > 1:
                text += f"; wd at the best lr: {fmt_sweep(task, c['wd_sweep'])}"
            if c.get('lr_sweep_at_best_wd'):
                text += f"; lr again at wd {c['best_wd']:g}: {fmt_sweep(task, c['lr_sweep_at_best_wd'])}"
            lines.append(text + f"; seeds: {', '.join(fmt(task, v) for v in c['per_seed'])}")
    lines.append('')


def regularizer_tables(study, runs, settings, lines):
    """Per cell and variant: final val top-1 of the weights and of their EMA, clean train top-1, and the gap."""
    budget = settings['cifar_budgets'][0]
    on = ', '.join(f"{name} ({', '.join(f'{k}={v}' for k, v in keys.items())})" for name, keys in REGULARIZERS.items())
    mean = lambda values: f"{100 * np.mean(values):.1f}" + (f" ± {100 * np.std(values, ddof=1):.1f}" if len(values) > 1 else '')
    lines += [f"## CIFAR-10 subset ViT: regularizers ({budget:,} iterations, "
              f"{budget * settings['cifar']['batch_size'] / CIFAR_TRAIN_IMAGES:.0f} epochs of {CIFAR_TRAIN_IMAGES:,} images)", '',
              f"All on: {on}. Each variant at the lr swept with all on; top-1 in % of the final weights, mean ± std over seeds "
              "(n); train top-1 on the training images as eval sees them (no augmentation); gap = train − val. "
              "Rows naming a budget: the same pair trained longer.", '',
              '| cell | variant | n | val top-1 | val top-1, EMA | train top-1 | gap | gap, EMA |', '|---|---|---|---|---|---|---|---|']
    for cell, c in study.items():
        for name, v in c['variants'].items():
            records = [runs[r] for r in v['runs']]
            val = [r['final_val_acc'] for r in records]
            ema = [r['ema_curve'][-1][2] for r in records if r.get('ema_curve')]
            train = [r['train_scores']['raw']['acc'] for r in records]
            train_ema = [r['train_scores']['ema']['acc'] for r in records if 'ema' in r['train_scores']]
            gap = [t - x for t, x in zip(train, val)]
            gap_ema = [t - x for t, x in zip(train_ema, ema)]
            lines.append(f"| {CELL_NAMES[cell]} (lr {c['best_lr']:g}) | {name} | {len(records)} | {mean(val)} | "
                         f"{mean(ema) if ema else ''} | {mean(train)} | {mean(gap)} | {mean(gap_ema) if gap_ema else ''} |")
    lines.append('')
    for cell, c in study.items():
        lines.append(f"- {CELL_NAMES[cell]}, lr sweep with all on ({metric_name('cifar')}, seed {SEED}): "
                     f"{fmt_sweep('cifar', c['lr_sweep'])}")
    lines.append('')


def write_tables(report, results_dir, jobs):
    summary, runs = report.get('summary', {}), report['runs']
    lm_tokens = lambda b: f"{b * report['settings']['lm']['batch_size'] * report['settings']['lm']['block_size'] / 1e6:.2g}M tokens"
    epochs = lambda b: f"{b * report['settings']['vision']['batch_size'] / TRAIN_IMAGES.get(report['settings']['scale'], math.nan):.2g} epochs"
    lines = [f"# Results ({report['settings']['scale']} setting)", '',
             'Every number is the best val metric over a run\'s evals; mean ± std over seeds (n). '
             f"Warmup {WARMUP:.0%} of each run, cosine to lr/{1 / MIN_LR_RATIO:g}.", '']
    if 'ladder' in summary:
        lines += ['## Tiny Shakespeare char GPT: the budget ladder', '']
        cell_tables('lm', summary['ladder'], lines, lm_tokens)
    if 'warmup' in summary:
        lines += ['## Warmup and momentum (best val loss, one seed, each cell at its best lr and wd)', '',
                  '| cell | momentum | ' + ' | '.join(f'warmup {w:.0%}' for w in WARMUPS) + ' |', '|---|---|' + '---|' * len(WARMUPS)]
        for cell, table in summary['warmup']['tables'].items():
            for m in (MOMENTA if 'msgdw' in cell else MOMENTA[:1]):
                row = [fmt('lm', table.get(f'{w:g}/{m:g}')) for w in WARMUPS]
                lines.append(f"| {CELL_NAMES[cell]} | {m:g}{'' if 'msgdw' in cell else ' (β1)'} | " + ' | '.join(row) + ' |')
        lines += ['', f'The study\'s anchors: the cells swept and seeded with warmup {STUDY_WARMUP:.0%} of the run.', '']
        cell_tables('lm', summary['warmup']['anchors'], lines, lm_tokens)
    if 'ablation' in summary:
        lines += ['## Ablation, Tiny Shakespeare, mSGDW (one seed, each setting at its own best lr)', '',
                  '| setting | best lr | best val loss | p99.9/median of abs(g), mid-run | kurtosis, mid-run | lr sweep |', '|---|---|---|---|---|---|']
        for setting, a in summary['ablation'].items():
            mid = a['grad_tail'][-1] if a['grad_tail'] else dict(p999_over_median=math.nan, kurtosis=math.nan)
            lines.append(f"| {setting} | {a['best_lr']:g} | {fmt('lm', a['best_val_loss'])} | {mid['p999_over_median']:.1f} "
                         f"| {mid['kurtosis']:.1f} | {fmt_sweep('lm', a['lr_sweep'])} |")
        lines.append('')
    if 'vision' in summary:
        lines += ['## Fashion-MNIST ViT', '']
        cell_tables('vision', summary['vision'], lines, epochs)
    cifar_epochs = lambda b: f"{b * report['settings']['cifar']['batch_size'] / CIFAR_TRAIN_IMAGES:.0f} epochs"
    if 'cells' in summary:
        lines += ['## CIFAR-10 subset ViT: the four cells, regularizers off, each tuned at its budget', '',
                  'Final val top-1 (the last eval: this set overfits); lr swept until bracketed, then the weight decay at '
                  'the best lr, then the lr again where the best weight decay moved.', '']
        cell_tables('cifar', summary['cells'], lines, cifar_epochs)
        fit_table(summary['cells'], runs, lines)
    fractions = [(name, task, budget, cs) for name, part, task in (('LM', 'ladder', 'lm'), ('Fashion-MNIST', 'vision', 'vision'),
                                                                    ('CIFAR-10 subset', 'cells', 'cifar'))
                 for budget, cs in by_budget(summary.get(part, {})).items()
                 if set(GAP_CELLS) <= set(cs)]
    if fractions:
        lines += ["## DNT closes most of mSGDW's gap to AdamW?", '',
                  '(standard + mSGDW − DNT + mSGDW) / (standard + mSGDW − standard + AdamW), from the seed means: 1 closes '
                  'the gap, above 1 passes AdamW, 0 is no better than standard + mSGDW.', '',
                  '| task | budget | fraction closed |', '|---|---|---|']
        lines += [f"| {name} | {budget:,} iterations | {cells_gap_closed(cs):.2f} |"
                  for name, task, budget, cs in fractions]
        lines += [f"| paper: {name} | | {gap_closed(a, m, d):.2f} |" for name, (a, _, m, d) in PAPER.items()]
        lines.append('')
    if 'width' in summary:
        for task, points in summary['width'].items():
            widths = sorted({int(k.split('/')[0]) for k in points})
            lines += [f"## The gap against width: {TASK_TITLES[task]} (depth 4, heads of {HEAD_DIM})", '',
                      f"{metric_name(task)}; mean over seeds (n); each point at its own best lr.", '',
                      '| cell | ' + ' | '.join(f'width {w}' for w in widths) + ' |', '|---' * (len(widths) + 1) + '|']
            for p, o in WIDTH_CELLS:
                row = [f"{fmt(task, c['mean'])} (n={len(c['per_seed'])}, lr {c['best_lr']:g})" for w in widths
                       for c in [points[f'{w}/{p}+{o}']]]
                lines.append(f"| {CELL_NAMES[f'{p}+{o}']} | " + ' | '.join(row) + ' |')
            gaps = gaps_to_adamw(points)
            for name in ('dnt+msgdw', 'standard+msgdw'):
                lines.append(f"| gap, {CELL_NAMES[name]} | " + ' | '.join(
                    f'{GAP_SCALE[task] * g:+.{GAP_DIGITS[task]}f} ± {GAP_SCALE[task] * e:.{GAP_DIGITS[task]}f}' for _, g, e in gaps[name]) + ' |')
            lines.append('| fraction closed | ' + ' | '.join(f'{cells_gap_closed(points, f"{w}/"):.2f}' for w in widths) + ' |')
            if task == 'cifar':
                for p, o in WIDTH_CELLS:
                    lines.append(f"| train top-1, {CELL_NAMES[f'{p}+{o}']} | " + ' | '.join(
                        f"{train_top1(points[f'{w}/{p}+{o}'], runs):.1f}%" for w in widths) + ' |')
            lines += ['', f"Lr sweeps ({metric_name(task)}, seed {SEED}): " + '; '.join(
                f"{CELL_NAMES[k.split('/')[1]]} at {k.split('/')[0]}: {fmt_sweep(task, c['lr_sweep'])}" for k, c in points.items()), '']
    if 'lion' in summary:
        for task, cells in summary['lion'].items():
            lines += [f"## Lion, {TASK_TITLES[task]} (weight decay {WEIGHT_DECAY['lion']:g}, betas "
                      f"{LION_BETAS['beta1']:g}/{LION_BETAS['beta2']:g})", '', '| cell | ' + metric_name(task) + ' | lr sweep |', '|---|---|---|']
            lines += [f"| {CELL_NAMES[k.split('/')[1]]} | {fmt_cell(task, c)} (n={len(c['per_seed'])}, lr {c['best_lr']:g}) | "
                      f"{fmt_sweep(task, c['lr_sweep'])} |" for k, c in cells.items()]
            lines.append('')
            if task == 'cifar':
                fit_table(cells, runs, lines)
    if 'regularizers' in summary:
        regularizer_tables(summary['regularizers'], runs, report['settings'], lines)
    for task, part in (('lm', 'ladder'), ('vision', 'vision'), ('cifar', 'cells')):
        if part not in summary:
            continue
        lines += [f'## Gradient tails, {task} (median over weight matrices; each cell\'s best run, seed {SEED})', '',
                  '| budget | cell | iter | p99.9/median of abs(g) | kurtosis of g |', '|---|---|---|---|---|']
        for b, cs in by_budget(summary[part]).items():
            for name, c in cs.items():
                for g in runs[c['runs'][0]]['grad_stats']:
                    lines.append(f"| {b:,} | {CELL_NAMES[name]} | {g['iter']} | {g['p999_over_median']:.1f} | {g['kurtosis']:.1f} |")
        lines.append('')
    m = report['memory']
    lines += ['## Optimizer state, GPT-2 124M (DNT, vocab 50304)', '', '| optimizer | state bytes | per parameter |', '|---|---|---|']
    lines += [f"| {name} | {m[key]:,} | {m[key] / m['params']:.3g} |" for key, name in (('adamw', 'AdamW'), ('msgdw', 'mSGDW'), ('muon', 'Muon + AdamW'))]
    parts = {}
    for r in runs.values():
        part = r.get('part', '?')
        if part.split()[0] in ('ladder', 'vision'):
            part += f", warmup {r['config']['warmup_iters'] / r['config']['max_iters']:.0%}"
        parts.setdefault(part, []).append(r['wall_s'])
    lines += ['', f'## Wall time (this machine, {jobs} runs at a time)', '', f'| part | runs | run time, summed | wall, /{jobs} |', '|---|---|---|---|']
    lines += [f'| {p} | {len(w)} | {sum(w) / 3600:.1f} h | {sum(w) / 3600 / jobs:.1f} h |' for p, w in parts.items()]
    lines += ['', '## Every recorded run', '', '| run | best val loss | final val loss | best val top-1 | wall |', '|---|---|---|---|---|']
    lines += [f"| {name} | {fmt('lm', r['best_val_loss'])} | {fmt('lm', r['final_val_loss'])} | "
              f"{fmt('vision', r['best_val_acc']) if r['config']['task'] != 'lm' else ''} | {r['wall_s'] / 60:.1f} min |"
              for name, r in sorted(runs.items())]
    with open(os.path.join(results_dir, 'results.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def train_top1(cell, runs):
    """A CIFAR cell's top-1 on the training images as eval sees them (no augmentation), seed mean, in %."""
    return 100 * np.mean([runs[n]['train_scores']['raw']['acc'] for n in cell['runs']])


def fit_table(cells, runs, lines):
    """What each CIFAR cell fits against what it generalizes."""
    lines += ['What each cell fits against what it generalizes: top-1 on the training images as eval sees them (no '
              'augmentation) and on val, seed means, in %.', '', '| cell | train top-1 | val top-1 | train − val |', '|---|---|---|---|']
    for key, c in cells.items():
        train = train_top1(c, runs)
        lines.append(f"| {CELL_NAMES[key.split('/')[1]]} | {train:.1f} | {100 * c['mean']:.1f} | {train - 100 * c['mean']:.1f} |")
    lines.append('')


def make_figures(report, results_dir):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figures (pip install matplotlib)")
        return
    summary, runs, lm = report.get('summary', {}), report['runs'], report['settings']['lm']

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(results_dir, name), dpi=80)
        plt.close(fig)

    def plot_clipped(ax, xs, ys, top, style, color, label):
        """ys against xs; a run that diverged (None) or lies above `top` is an x at the top of the chart."""
        ax.plot(xs, [y if y is not None else np.nan for y in ys], style, color=color, label=label)
        for x, y in zip(xs, ys):
            if y is None or y > top:
                ax.plot(x, top - 0.02, 'x', color=color, ms=9)

    def lr_basins(cells, title, name):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
        lo = min(m for c in cells.values() for m in c['lr_sweep'].values() if m is not None)
        for ax, opt in zip(axes, ('adamw', 'msgdw', 'muon')):
            for cell, c in cells.items():
                if cell.endswith(opt):
                    plot_clipped(ax, [float(v) for v in c['lr_sweep']], list(c['lr_sweep'].values()), lo + 0.5, 'o-', COLORS[cell], CELL_NAMES[cell])
            ax.set(xscale='log', xlabel='peak learning rate', title=f'{opt}, {title} (x: diverged or above)', ylim=(lo - 0.02, lo + 0.5))
            ax.legend(fontsize=8)
        axes[0].set_ylabel(f'best val loss, seed {SEED}')
        save(fig, name)

    # (a) the gap to standard + AdamW against data seen, each point a full run with its own schedule
    panels = [(task, gaps, per_iter, what, train_images) for task, part, per_iter, what, train_images in
              (('lm', 'ladder', lm['batch_size'] * lm['block_size'], 'tokens', None),
               ('vision', 'vision', report['settings']['vision']['batch_size'], 'images', TRAIN_IMAGES.get(report['settings']['scale'])),
               ('cifar', 'cells', report['settings']['cifar']['batch_size'], 'images', CIFAR_TRAIN_IMAGES))
              if (gaps := gaps_to_adamw(summary.get(part, {})))]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
        for ax, (task, gaps, per_iter, what, train_images) in zip(axes[0], panels):
            scale = GAP_SCALE[task]
            for name in [f'{p}+{o}' for p, o in CELLS[task]]:
                if name in gaps:
                    b, g, e = np.array(gaps[name]).T
                    ax.errorbar(b * per_iter, scale * g, yerr=scale * e, marker='o', capsize=3, color=COLORS[name], label=CELL_NAMES[name])
            ax.axhline(0, color=COLORS['standard+adamw'], ls='--', label='standard + AdamW')
            seen = sorted({b * per_iter for pts in gaps.values() for b, *_ in pts})
            ax.set_xscale('log')
            ax.set_xticks(seen, [f'{x / 1e6:.2g}M' + (f'\n{x / train_images:.2g} epochs' if train_images else '') for x in seen])
            ax.minorticks_off()
            ax.set(xlabel=f'{what} seen (one run per budget, each tuned)', ylabel=GAP_UNITS[task],
                   title=f'{TASK_TITLES[task]}: gap to standard + AdamW (± seed std)')
            ax.legend(fontsize=8)
        save(fig, 'gap_vs_tokens.png')
    if 'width' in summary:  # the gap to standard + AdamW against the model's width
        fig, axes = plt.subplots(1, len(summary['width']), figsize=(7 * len(summary['width']), 4.5), squeeze=False)
        for ax, (task, points) in zip(axes[0], summary['width'].items()):
            scale = GAP_SCALE[task]
            for name, gaps in gaps_to_adamw(points).items():
                w, g, e = np.array(gaps).T
                ax.errorbar(w, scale * g, yerr=scale * e, marker='o', capsize=3, color=COLORS[name], label=CELL_NAMES[name])
            ax.axhline(0, color=COLORS['standard+adamw'], ls='--', label='standard + AdamW')
            widths = sorted({int(k.split('/')[0]) for k in points})
            ax.set_xscale('log')
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.minorticks_off()
            ax.set(xlabel='width (depth 4; each point at its own best lr)', ylabel=GAP_UNITS[task],
                   title=f'{TASK_TITLES[task]}: gap to standard + AdamW (± seed std)')
            ax.legend(fontsize=8)
        save(fig, 'gap_vs_width.png')
    if 'ladder' in summary:
        budgets = by_budget(summary['ladder'])
        # (b) val curves, mean over seeds with the seeds' range, at each budget above the smallest
        shown = [b for b in budgets if b > min(budgets)] or list(budgets)
        fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.5), squeeze=False)
        for ax, b in zip(axes[0], shown):
            for name, c in budgets[b].items():
                curves = [np.array([(it, loss) for it, loss, *_ in runs[r]['curve']]) for r in c['runs'] if not runs[r]['diverged']]
                if not curves:
                    continue
                n = min(len(cv) for cv in curves)
                its, ys = curves[0][:n, 0], np.stack([cv[:n, 1] for cv in curves])
                ax.plot(its, ys.mean(0), color=COLORS[name], label=f"{CELL_NAMES[name]} (lr {c['best_lr']:g})")
                ax.fill_between(its, ys.min(0), ys.max(0), color=COLORS[name], alpha=0.2)
            lo = min(line.get_ydata().min() for line in ax.get_lines())
            ax.set(xlabel='iteration', ylabel='val loss (mean, band: range over seeds)', title=f'{b:,} iterations',
                   ylim=(lo - 0.02, min(ax.get_ylim()[1], lo + 0.8)))  # the early iterations would squash the rest
            ax.legend(fontsize=8)
        save(fig, 'curves.png')
        # (c) the learning-rate basin of each cell at the sweep budget
        sweep_budget = report['settings'].get('sweep_budget', max(budgets))
        if sweep_budget in budgets:
            lr_basins(budgets[sweep_budget], f'{sweep_budget:,} iterations', 'lr_basin.png')
        # gradient histograms: standard vs DNT under AdamW at the sweep budget, init and mid-run
        cells = budgets.get(sweep_budget, {})
        if 'standard+adamw' in cells and 'dnt+adamw' in cells:
            kinds = ['all', 'attn_qkv', 'attn_out', 'mlp_in', 'mlp_out', 'embed']
            fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
            edges = np.logspace(-12, 0, 49)
            centers = np.sqrt(edges[1:] * edges[:-1])
            for name in ('standard+adamw', 'dnt+adamw'):
                stats = runs[cells[name]['runs'][0]]['grad_stats']
                for n, g in enumerate(stats):
                    for ax, kind in zip(axes.flat, kinds):
                        counts = np.array(g['hist'].get(kind, [0] * 50), dtype=float)[1:-1]
                        if counts.sum():
                            ax.plot(centers, counts / counts.sum(), color=COLORS[name], alpha=0.35 + 0.65 * (n + 1) / len(stats),
                                    label=f"{CELL_NAMES[name]} @ iter {g['iter']}")
            for ax, kind in zip(axes.flat, kinds):
                ax.set(xscale='log', xlabel='|g|', ylabel='fraction of entries', title=kind)
            axes.flat[0].legend(fontsize=7)
            fig.suptitle('gradient magnitudes, Tiny Shakespeare GPT trained with AdamW')
            save(fig, 'grad_hist_lm.png')
    if 'warmup' in summary:  # (d) warmup and momentum
        fig, ax = plt.subplots(figsize=(7, 4.5))
        tables = summary['warmup']['tables']
        lo = min(y for table in tables.values() for y in table.values() if y is not None)
        for cell, table in tables.items():
            for m in (MOMENTA if 'msgdw' in cell else MOMENTA[:1]):
                plot_clipped(ax, [100 * w for w in WARMUPS], [table.get(f'{w:g}/{m:g}') for w in WARMUPS], lo + 0.5,
                             'o-' if m == 0.9 else 's--', COLORS[cell], CELL_NAMES[cell] + (f', momentum {m:g}' if 'msgdw' in cell else ''))
        ax.set(xscale='log', xlabel='warmup, % of the run', ylabel=f'best val loss, seed {SEED}', ylim=(lo - 0.02, lo + 0.5),
               title=f"warmup and momentum at {report['settings'].get('sweep_budget', '')} iterations (x: diverged or above)")
        ax.set_xticks([100 * w for w in WARMUPS], [f'{100 * w:g}' for w in WARMUPS])
        ax.minorticks_off()
        ax.legend(fontsize=8)
        save(fig, 'warmup.png')
        for budget, cells in by_budget(summary['warmup']['anchors']).items():
            lr_basins(cells, f'{budget:,} iterations, warmup {STUDY_WARMUP:.0%}', f'lr_basin_warmup{100 * STUDY_WARMUP:g}.png')
    if 'ablation' in summary:
        ablation = summary['ablation']
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.barh(list(ablation), [a['best_val_loss'] for a in ablation.values()], color='tab:cyan')
        for y, a in enumerate(ablation.values()):
            ax.text(a['best_val_loss'], y, f" {a['best_val_loss']:.3f} (lr {a['best_lr']:g})", va='center', fontsize=8)
        losses = [a['best_val_loss'] for a in ablation.values() if math.isfinite(a['best_val_loss'])]
        ax.set(xlabel='best val loss (mSGDW, one seed)', xlim=(min(losses) - 0.05, max(losses) + 0.08))
        ax.invert_yaxis()
        save(fig, 'ablation.png')
    if 'vision' in summary:
        budgets = by_budget(summary['vision'])
        rows = math.ceil(len(budgets) / 2)  # two panels a row
        fig, axes = plt.subplots(rows, 2, figsize=(12, 4.5 * rows), squeeze=False)
        for ax in axes.flat[len(budgets):]:
            ax.axis('off')
        for ax, (b, cs) in zip(axes.flat, budgets.items()):
            for name, c in cs.items():
                for i, r in enumerate(c['runs']):
                    curve = runs[r]['curve']
                    ax.plot([it for it, *_ in curve], [100 * (acc or 0) for _, _, acc, *_ in curve], color=COLORS[name],
                            alpha=1.0 if i == 0 else 0.4, label=f"{CELL_NAMES[name]} (lr {c['best_lr']:g})" if i == 0 else None)
            ax.set(xlabel='iteration', ylabel='val top-1 (%)', title=f'Fashion-MNIST ViT, {b:,} iterations (all seeds)', ylim=(60, None))
            ax.legend(fontsize=8)
        save(fig, 'vision.png')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data_root', default=os.environ.get('NANODNT_DATA'), help='folder with tinyshakespeare/ and fashion_mnist/ (env NANODNT_DATA)')
    parser.add_argument('--quick', action='store_true', help='tiny models and sweeps: minutes')
    parser.add_argument('--parts', default=','.join(PARTS), help='comma-separated: ' + ', '.join(PARTS))
    parser.add_argument('--budgets', help='LM iterations, comma-separated (default 400,1500,5000)')
    parser.add_argument('--vision_budgets', help='ViT iterations, comma-separated; the first is swept (default 1400,4200,12600,37800: '
                        '3, 9, 27 and 81 epochs)')
    parser.add_argument('--tables_only', action='store_true', help='train nothing: tables and figures from the recorded runs')
    parser.add_argument('--out', help='run folders (default runs/full or runs/quick)')
    parser.add_argument('--results', help='results.json, tables and figures (default results/ or <out>/results)')
    parser.add_argument('--jobs', type=int, default=2, help='train.py processes at once; each gets cores/jobs threads')
    parser.add_argument('--check', help='NAME[@ITERS],...: train recorded runs again (to ITERS) and compare their evals '
                        'with the record; exit 1 where one differs')
    args = parser.parse_args()
    scale_name = 'quick' if args.quick else 'full'
    scale = SCALES[scale_name]
    parts = args.parts.split(',')
    budgets = [int(b) for b in args.budgets.split(',')] if args.budgets else list(scale['budgets'])
    vision_budgets = [int(b) for b in args.vision_budgets.split(',')] if args.vision_budgets else list(scale['vision_budgets'])
    if unknown := set(parts) - set(PARTS):
        sys.exit(f"reproduce.py: error: unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    import torch
    if not hasattr(torch.optim, 'Muon'):  # the LM cells and the memory table include it
        sys.exit(f"reproduce.py: error: its cells include Muon, which needs torch 2.9 or newer (torch.optim.Muon); "
                 f"this is torch {torch.__version__}")
    if not args.data_root and not args.tables_only:
        sys.exit("reproduce.py: error: give --data_root (a folder with " + ', '.join(s for _, s in SOURCES.values())
                 + ") or set NANODNT_DATA")
    out = args.out or os.path.join('runs', scale_name)
    results_dir = args.results or ('results' if scale_name == 'full' else os.path.join(out, 'results'))
    os.makedirs(results_dir, exist_ok=True)

    data_dirs = {task: os.path.join(out, 'data', task) for task in SOURCES}
    runner = Runner(out, os.path.join(results_dir, 'results.json'), data_dirs, args.jobs, train=not args.tables_only)
    checks = args.check.split(',') if args.check else []
    malformed = lambda name, at, iters: name not in runner.runs or (at and not iters.isdigit())
    if unknown := [c for c in checks if malformed(*c.partition('@'))]:
        sys.exit(f"reproduce.py: error: --check: {unknown[0]!r} is no NAME[@ITERS] of a run in {runner.results_path}")
    tasks = {runner.runs[c.partition('@')[0]]['config']['task'] for c in checks} or {task for part in parts for task in PARTS[part]}
    if not args.tables_only:
        for task in tasks:
            dataset, source = SOURCES[task]
            if not os.path.exists(data_dirs[task]):
                subprocess.run([sys.executable, 'prepare_data.py', dataset, '--input', os.path.join(args.data_root, source),
                                '--out_dir', data_dirs[task]], check=True)
    if checks:
        sys.exit(0 if all([runner.check(c) for c in checks]) else 1)
    # the tables come from every recorded run, each part at its default and asked-for budgets
    everything = {'ladder': sorted({*budgets, *scale['budgets']}), 'vision': sorted({*vision_budgets, *scale['vision_budgets']})}
    ctx = dict(scale=scale, sweep_budget=dict(lm=scale['sweep_budget'], vision=vision_budgets[0]),
               rungs=dict(lm=everything['ladder'], vision=everything['vision']),
               bases={task: {'task': task, **COMMON, **scale[task], 'momentum': 0.9, 'seed': SEED} for task in SOURCES})
    report = runner.report
    report['settings'] = dict(scale=scale_name, lm=scale['lm'], vision=scale['vision'], cifar=scale['cifar'],
                              cifar_budgets=scale['cifar_budgets'], common=COMMON, warmup=WARMUP,
                              sweep_budget=scale['sweep_budget'], min_lr_ratio=MIN_LR_RATIO, seed=SEED)
    experiments = {'ladder': lambda b: ladder(runner, ctx, 'lm', b), 'warmup': lambda b: warmup_study(runner, ctx),
                   'ablation': lambda b: ablation(runner, ctx), 'vision': lambda b: ladder(runner, ctx, 'vision', b),
                   'regularizers': lambda b: regularizers(runner, ctx), 'cells': lambda b: four_cells(runner, ctx),
                   'width': lambda b: by_task('width', lambda task: width_study(runner, ctx, task)),
                   'lion': lambda b: by_task('lion', lambda task: lion_cells(runner, ctx, task))}
    asked = {'ladder': budgets, 'vision': vision_budgets}
    for part in parts if runner.train else []:
        runner.part = f"{part} {','.join(map(str, asked[part]))}" if part in asked else part
        experiments[part](asked.get(part))
    runner.train = False
    summary = {part: if_recorded(part, lambda: experiment(everything.get(part))) for part, experiment in experiments.items()}
    report['summary'] = {part: result for part, result in summary.items() if result}
    report['memory'] = memory_table()
    with runner.lock:
        write_json(runner.results_path, report)
    write_tables(report, results_dir, args.jobs)
    make_figures(report, results_dir)
    print(f"tables and figures in {results_dir}/")


if __name__ == '__main__':
    main()
