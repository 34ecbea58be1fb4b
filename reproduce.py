"""
Does DNT let momentum SGD match AdamW? The paper's experiments at CPU scale, in one command:
{standard, DNT} x {AdamW, mSGDW} on Tiny Shakespeare (char) and Fashion-MNIST, each cell with
a learning-rate sweep that must bracket its best value (mSGDW: then a weight-decay sweep), the
best setting rerun with more seeds, the S1..S5 ablation, gradient-tail statistics, memory.

$ python reproduce.py --data_root DATA           # the full setting: over an hour on 2 cores
$ python reproduce.py --data_root DATA --quick   # minutes: a smoke check of the pipeline
DATA holds tinyshakespeare/input.txt and fashion_mnist/fashion_mnist.npz (or set NANODNT_DATA).
Every run is a train.py process in its own folder under --out: a finished run is skipped and
an interrupted one resumed, so a stopped reproduction continues where it stopped. The tables
(results.md, results.json) and figures go to --results.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

LM = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=32, max_iters=400, lr_decay_iters=400,
          warmup_iters=40, eval_interval=100, eval_iters=20, log_interval=50, grad_stats_interval=200)
VISION = dict(n_layer=4, n_head=4, n_embd=128, patch_size=7, batch_size=128, max_iters=300, lr_decay_iters=300,
              warmup_iters=20, eval_interval=100, crop_padding=2, log_interval=50, grad_stats_interval=150)
SCALES = {
    'full': dict(lm=LM, vision=VISION, n_lrs=4, extra_seeds=2, max_extensions=3, ablation_lrs=3,
                 msgdw_wds=(1e-4, 1e-3, 1e-2)),
    'quick': dict(lm={**LM, **dict(n_layer=1, n_embd=32, n_head=2, block_size=32, batch_size=8, max_iters=20,
                                   lr_decay_iters=20, warmup_iters=2, eval_interval=10, eval_iters=2, grad_stats_interval=10)},
                  vision={**VISION, **dict(n_layer=1, n_embd=32, n_head=2, batch_size=16, max_iters=20,
                                           lr_decay_iters=20, warmup_iters=2, eval_interval=10, grad_stats_interval=10)},
                  n_lrs=2, extra_seeds=1, max_extensions=0, ablation_lrs=1, msgdw_wds=(1e-4, 1e-3)),
}
COMMON = dict(compile=False, device='cpu', dtype='float32', grad_clip=1.0, dropout=0.0, gradient_accumulation_steps=1)
LR_GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]  # half-decade steps
FIRST_LRS = {'adamw': 3e-4, 'msgdw': 0.03}  # where each optimizer's sweep starts on LR_GRID
MIN_LR_RATIO = 0.1  # cosine decay to a tenth of each run's peak learning rate
WEIGHT_DECAY = {'adamw': 0.1}  # AdamW: nanoGPT's; mSGDW: swept
CELLS = [('standard', 'adamw'), ('dnt', 'adamw'), ('standard', 'msgdw'), ('dnt', 'msgdw')]
ABLATION = {'S1 standard': dict(preset='standard'), 'S2 +QKNorm': dict(preset='s2'), 'S3 +InputNorm': dict(preset='s3'),
            'S4 +MidNorm, both PreNorms': dict(preset='s4'), 'S5 DNT (LayerNorm)': dict(preset='dnt'),
            'S5 DNT (RMSNorm)': dict(preset='dnt', norm='rmsnorm')}
SEED = 1337

# ----------------------------------------------------------------------------------------
# running train.py

def read_log(out_dir):
    path = os.path.join(out_dir, 'log.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def summarize(out_dir, max_iters):
    """The run's eval curve and best metrics, or None if it has not finished."""
    status_path = os.path.join(out_dir, 'status.json')
    status = json.load(open(status_path)) if os.path.exists(status_path) else {}
    log = read_log(out_dir)
    evals = [r for r in log if 'val_loss' in r]
    if not status.get('diverged') and not any(r['iter'] == max_iters for r in evals):
        return None
    grads = [r for r in log if 'grad_stats' in r]
    return dict(diverged=status.get('diverged', False), peak_rss_mb=status.get('peak_rss_mb'),
                best_val_loss=min([r['val_loss'] for r in evals] + [math.inf]),
                best_val_acc=max([r.get('val_acc', 0.0) for r in evals] + [0.0]),
                curve=[(r['iter'], r['val_loss'], r.get('val_acc')) for r in evals], grad_stats=grads)


class Runner:
    """Runs train.py; sweeps of different cells call it from their own threads, `jobs` processes at a time."""

    def __init__(self, out, jobs):
        self.out, self.jobs = out, jobs
        self.slots = threading.Semaphore(jobs)
        self.runs = {}  # name -> (args, summary)

    def run(self, name, args):
        out_dir = os.path.join(self.out, name)
        args = {**args, 'min_lr': args['learning_rate'] * MIN_LR_RATIO}
        summary = summarize(out_dir, args['max_iters'])
        if summary is None:
            os.makedirs(out_dir, exist_ok=True)
            resume = os.path.exists(os.path.join(out_dir, 'ckpt.pt'))
            cmd = [sys.executable, 'train.py', *[f'--{k}={v!r}' if isinstance(v, str) else f'--{k}={v}' for k, v in args.items()],
                   f'--out_dir={out_dir}', f"--init_from={'resume' if resume else 'scratch'}"]
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, os.cpu_count() // self.jobs)))
            with self.slots, open(os.path.join(out_dir, 'train.log'), 'a') as f:
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
                _, code, usage = os.wait4(proc.pid, 0)
            code = os.waitstatus_to_exitcode(code)
            with open(os.path.join(out_dir, 'train.log')) as f:
                diverged = code != 0 and 'loss is' in f.read()  # train.py stops on a NaN/Inf loss
            if code != 0 and not diverged:
                raise SystemExit(f"reproduce.py: {name} failed (exit {code}); see {out_dir}/train.log")
            with open(os.path.join(out_dir, 'status.json'), 'w') as f:
                json.dump(dict(diverged=diverged, peak_rss_mb=usage.ru_maxrss / 1024), f)
            summary = summarize(out_dir, args['max_iters'])
            if summary is None:  # train.py exits 0 when a signal stops it: saved, not finished
                raise SystemExit(f"reproduce.py: {name} stopped before max_iters (a signal?); run reproduce.py again to resume it")
            result = 'diverged' if diverged else f"best val loss {summary['best_val_loss']:.4f}, best val acc {summary['best_val_acc']:.4f}"
            print(f"{name}: {result}", flush=True)
        self.runs[name] = (args, summary)
        return summary

    def run_all(self, named_args):
        return parallel(lambda item: self.run(*item), named_args.items())


def parallel(fn, items):
    """fn over items in threads; the runner's slots bound how many train.py processes run at once."""
    items = list(items)
    with ThreadPoolExecutor(max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def run_name(task, args):
    name = f"{task}_{args['preset']}_{args['optimizer']}_lr{args['learning_rate']:g}_wd{args['weight_decay']:g}_s{args['seed']}"
    return name + ('_rmsnorm' if args.get('norm') == 'rmsnorm' else '')


def score(task, summary):
    """Higher is better: accuracy for images, minus the loss for language."""
    if summary['diverged']:
        return -math.inf
    return summary['best_val_acc'] if task == 'vision' else -summary['best_val_loss']


def sweep(runner, task, base, key, values, max_extensions, grid):
    """Run base with each value of key; while the best sits at an end of the sweep, extend it
    one grid step past that end. Returns {value: summary} and the best value."""
    values, results = list(values), {}
    for _ in range(max_extensions + 1):
        todo = {run_name(task, {**base, key: v}): {**base, key: v} for v in values if v not in results}
        for (name, args), summary in zip(todo.items(), runner.run_all(todo)):
            results[args[key]] = summary
        ordered = sorted(results)
        best = max(ordered, key=lambda v: score(task, results[v]))
        i = grid.index(best)
        if best == ordered[0] and i > 0:
            values = [grid[i - 1]]
        elif best == ordered[-1] and i + 1 < len(grid):
            values = [grid[i + 1]]
        else:
            break
    return results, best


def lr_values(optimizer, n):
    i = LR_GRID.index(FIRST_LRS[optimizer])
    return LR_GRID[i:i + n]

# ----------------------------------------------------------------------------------------
# the experiments

def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data_root', default=os.environ.get('NANODNT_DATA'), help='folder with tinyshakespeare/ and fashion_mnist/ (env NANODNT_DATA)')
    parser.add_argument('--quick', action='store_true', help='tiny models and sweeps: minutes')
    parser.add_argument('--out', help='run folders (default runs/full or runs/quick)')
    parser.add_argument('--results', help='tables and figures (default results/ or <out>/results)')
    parser.add_argument('--jobs', type=int, default=2, help='train.py processes at once; each gets cores/jobs threads')
    parser.add_argument('--tasks', default='lm,vision', help='comma-separated: lm, vision')
    args = parser.parse_args()
    if not args.data_root:
        sys.exit("reproduce.py: error: give --data_root (a folder with tinyshakespeare/input.txt and fashion_mnist/fashion_mnist.npz) or set NANODNT_DATA")
    scale_name = 'quick' if args.quick else 'full'
    scale = SCALES[scale_name]
    out = args.out or os.path.join('runs', scale_name)
    results_dir = args.results or ('results' if scale_name == 'full' else os.path.join(out, 'results'))
    os.makedirs(results_dir, exist_ok=True)

    sources = {'lm': ('shakespeare_char', os.path.join(args.data_root, 'tinyshakespeare', 'input.txt')),
               'vision': ('npz', os.path.join(args.data_root, 'fashion_mnist', 'fashion_mnist.npz'))}
    runner = Runner(out, args.jobs)
    report = dict(scale=scale_name, settings=dict(lm=scale['lm'], vision=scale['vision'], common=COMMON))
    tasks = args.tasks.split(',')
    for task in tasks:
        dataset, source = sources[task]
        data_dir = os.path.join(out, 'data', task)
        if not os.path.exists(data_dir):
            subprocess.run([sys.executable, 'prepare_data.py', dataset, '--input', source, '--out_dir', data_dir], check=True)
    bases = {task: {**COMMON, **scale[task], 'data_dir': os.path.join(out, 'data', task), 'seed': SEED} for task in tasks}
    report.update(zip(tasks, parallel(lambda task: run_task(runner, task, bases[task], scale), tasks)))
    report['memory'] = memory_table()
    with open(os.path.join(results_dir, 'results.json'), 'w') as f:
        json.dump(report, f, indent=1)
    write_tables(report, results_dir)
    make_figures(report, runner, results_dir)
    print(f"tables and figures in {results_dir}/")


def run_task(runner, task, base, scale):
    cells = dict(zip([f'{p}+{o}' for p, o in CELLS], parallel(lambda c: run_cell(runner, task, base, scale, *c), CELLS)))
    result = dict(cells=cells)
    if task == 'lm':  # the ablation: each setting at its own best lr, mSGDW at DNT's best weight decay
        dnt = cells['dnt+msgdw']
        i = LR_GRID.index(dnt['best_lr'])
        start = LR_GRID[max(0, i - scale['ablation_lrs'] // 2):][:scale['ablation_lrs']]

        def ablate(item):
            setting, switches = item
            args = {**base, 'optimizer': 'msgdw', 'weight_decay': dnt['best_wd'], **switches}
            lrs, best_lr = sweep(runner, task, args, 'learning_rate', start, scale['max_extensions'], LR_GRID)
            return dict(best_lr=best_lr, best_val_loss=lrs[best_lr]['best_val_loss'],
                        run=run_name(task, {**args, 'learning_rate': best_lr}),
                        lr_sweep={f'{lr:g}': summary_metrics(s) for lr, s in sorted(lrs.items())},
                        grad_tail=grad_tail(lrs[best_lr]))
        result['ablation'] = dict(zip(ABLATION, parallel(ablate, ABLATION.items())))
    result['grad_tail'] = {cell: grad_tail(runner.runs[c['run']][1]) for cell, c in cells.items()}
    return result


def run_cell(runner, task, base, scale, preset, optimizer):
    """One cell of {standard, DNT} x {AdamW, mSGDW}: lr sweep, weight-decay sweep (mSGDW), more seeds."""
    cell = {**base, 'preset': preset, 'optimizer': optimizer,
            'weight_decay': WEIGHT_DECAY.get(optimizer, scale['msgdw_wds'][len(scale['msgdw_wds']) // 2])}
    lrs, best_lr = sweep(runner, task, cell, 'learning_rate', lr_values(optimizer, scale['n_lrs']), scale['max_extensions'], LR_GRID)
    cell['learning_rate'] = best_lr
    wds = {cell['weight_decay']: lrs[best_lr]}
    if optimizer == 'msgdw':
        wds, best_wd = sweep(runner, task, cell, 'weight_decay', scale['msgdw_wds'], 0, sorted(scale['msgdw_wds']))
        cell['weight_decay'] = best_wd
    seeds = [SEED + i for i in range(scale['extra_seeds'] + 1)]
    runner.run_all({run_name(task, {**cell, 'seed': s}): {**cell, 'seed': s} for s in seeds[1:]})
    per_seed = [runner.runs[run_name(task, {**cell, 'seed': s})][1] for s in seeds]
    metric = [s['best_val_acc'] if task == 'vision' else s['best_val_loss'] for s in per_seed]
    return dict(
        best_lr=best_lr, best_wd=cell['weight_decay'], run=run_name(task, cell),
        lr_sweep={f'{lr:g}': summary_metrics(s) for lr, s in sorted(lrs.items())},
        wd_sweep={f'{wd:g}': summary_metrics(s) for wd, s in sorted(wds.items())},
        seeds=seeds, metric='val_acc' if task == 'vision' else 'val_loss',
        per_seed=metric, mean=float(np.mean(metric)), std=float(np.std(metric, ddof=1)) if len(metric) > 1 else 0.0)


def summary_metrics(s):
    return dict(diverged=s['diverged'], best_val_loss=s['best_val_loss'], best_val_acc=s['best_val_acc'], peak_rss_mb=s['peak_rss_mb'])


def grad_tail(summary):
    """Per logged iteration: the median over weight matrices of p99.9/median and of kurtosis."""
    return {str(r['iter']): dict(p999_over_median=float(np.median([t['p999_over_median'] for t in r['grad_stats']['tensors'].values()])),
                                 kurtosis=float(np.median([t['kurtosis'] for t in r['grad_stats']['tensors'].values()])))
            for r in summary['grad_stats']}


def memory_table():
    """Exact optimizer-state bytes of GPT-2 124M (vocab 50304) after one step with each optimizer."""
    import torch
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(preset='dnt'))
    table = {}
    for optimizer in ('adamw', 'msgdw'):
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

def fmt_metric(task, value):
    return f'{100 * value:.2f}%' if task == 'vision' else f'{value:.4f}'


def fmt_sweep(task, sweep):
    key = 'best_val_acc' if task == 'vision' else 'best_val_loss'
    return ', '.join(f"{v}: {'diverged' if s['diverged'] else fmt_metric(task, s[key])}" for v, s in sweep.items())


def write_tables(report, results_dir):
    lines = [f"# Results ({report['scale']} setting)", '']
    for task in ('lm', 'vision'):
        if task not in report:
            continue
        metric = 'best val top-1' if task == 'vision' else 'best val loss'
        lines += [f"## {'Fashion-MNIST ViT' if task == 'vision' else 'Tiny Shakespeare char GPT'}", '',
                  f'| cell | best lr | weight decay | {metric}, seed {SEED} | mean ± std over seeds | lr sweep ({metric}) |',
                  '|---|---|---|---|---|---|']
        for name, c in report[task]['cells'].items():
            sweep_text = fmt_sweep(task, c['lr_sweep'])
            if len(c['wd_sweep']) > 1:
                sweep_text += '; wd at best lr: ' + fmt_sweep(task, c['wd_sweep'])
            spread = f"{fmt_metric(task, c['mean'])} ± {fmt_metric(task, c['std'])} (n={len(c['per_seed'])})"
            lines.append(f"| {name} | {c['best_lr']:g} | {c['best_wd']:g} | {fmt_metric(task, c['per_seed'][0])} | {spread} | {sweep_text} |")
        lines += ['', '| cell (best run) | iter | p99.9 / median of abs(g) | kurtosis of g |', '|---|---|---|---|']
        for name, tail in report[task]['grad_tail'].items():
            for it, t in tail.items():
                lines.append(f"| {name} | {it} | {t['p999_over_median']:.1f} | {t['kurtosis']:.1f} |")
        lines.append('')
        if 'ablation' in report[task]:
            lines += ['## Ablation, Tiny Shakespeare, mSGDW', '',
                      '| setting | best lr | best val loss | p99.9/median (end) | kurtosis (end) | lr sweep |', '|---|---|---|---|---|---|']
            for setting, a in report[task]['ablation'].items():
                end = a['grad_tail'][max(a['grad_tail'], key=int)] if a['grad_tail'] else dict(p999_over_median=math.nan, kurtosis=math.nan)
                lines.append(f"| {setting} | {a['best_lr']:g} | {a['best_val_loss']:.4f} | {end['p999_over_median']:.1f} "
                             f"| {end['kurtosis']:.1f} | {fmt_sweep(task, a['lr_sweep'])} |")
            lines.append('')
    m = report['memory']
    lines += ['## Optimizer state, GPT-2 124M', '', '| optimizer | state bytes | per parameter |', '|---|---|---|',
              f"| AdamW | {m['adamw']:,} | {m['adamw'] / m['params']:g} |", f"| mSGDW | {m['msgdw']:,} | {m['msgdw'] / m['params']:g} |", '']
    with open(os.path.join(results_dir, 'results.md'), 'w') as f:
        f.write('\n'.join(lines))


def make_figures(report, runner, results_dir):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figures (pip install matplotlib)")
        return
    colors = {'standard+adamw': 'tab:red', 'dnt+adamw': 'tab:blue', 'standard+msgdw': 'tab:orange', 'dnt+msgdw': 'tab:cyan'}
    tasks = [t for t in ('lm', 'vision') if t in report]
    # 1. validation curves of each cell's best run
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for cell, c in report[task]['cells'].items():
            curve = runner.runs[c['run']][1]['curve']
            ys = [100 * acc if task == 'vision' else loss for _, loss, acc in curve]
            ax.plot([it for it, _, _ in curve], ys, color=colors[cell], label=f"{cell} (lr {c['best_lr']:g})")
        ax.set(xlabel='iteration', ylabel='val top-1 (%)' if task == 'vision' else 'val loss',
               title='Fashion-MNIST ViT' if task == 'vision' else 'Tiny Shakespeare char GPT')
        if task == 'lm':
            ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, 'curves.png'), dpi=80)
    # 2. |g| histograms, standard vs DNT, both trained with AdamW at their best lr; later = darker
    for task in tasks:
        kinds = ['all', 'attn_qkv', 'attn_out', 'mlp_in', 'mlp_out', 'embed']
        fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
        for cell in ('standard+adamw', 'dnt+adamw'):
            records = runner.runs[report[task]['cells'][cell]['run']][1]['grad_stats']
            for n, record in enumerate(records):
                stats = record['grad_stats']
                edges = np.array(stats['bin_edges'])
                centers = np.sqrt(edges[1:] * edges[:-1])
                for ax, kind in zip(axes.flat, kinds):
                    counts = np.array(stats['hist'].get(kind, [0] * (len(edges) + 1)), dtype=float)[1:-1]
                    if counts.sum():
                        ax.plot(centers, counts / counts.sum(), color=colors[cell], alpha=0.3 + 0.7 * (n + 1) / len(records),
                                label=f"{cell.split('+')[0]} @ {record['iter']}")
        for ax, kind in zip(axes.flat, kinds):
            ax.set(xscale='log', xlabel='|g|', ylabel='fraction of entries', title=kind)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"gradient magnitudes, {'Fashion-MNIST ViT' if task == 'vision' else 'Tiny Shakespeare GPT'} (AdamW-trained)")
        fig.tight_layout()
        fig.savefig(os.path.join(results_dir, f'grad_hist_{task}.png'), dpi=80)
    # 3. the ablation
    if 'lm' in report and 'ablation' in report['lm']:
        ablation = report['lm']['ablation']
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.barh(list(ablation), [a['best_val_loss'] for a in ablation.values()], color='tab:cyan')
        for y, a in enumerate(ablation.values()):
            ax.text(a['best_val_loss'], y, f" {a['best_val_loss']:.3f} (lr {a['best_lr']:g})", va='center', fontsize=8)
        losses = [a['best_val_loss'] for a in ablation.values() if math.isfinite(a['best_val_loss'])]
        ax.set(xlabel='best val loss (mSGDW)', xlim=(min(losses) - 0.05, max(losses) + 0.08))
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(os.path.join(results_dir, 'ablation.png'), dpi=80)


if __name__ == '__main__':
    main()
