"""reproduce.py --quick end to end on data the test writes: the ladder, sweeps, seeds, the rungs above the sweep,
warmup study, ablation, vision, the regularizer study, tables, figures, and that a second run reuses every recorded
run instead of training again; a run cut short and resumed; and the rules of the long rungs on made-up scores."""
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import reproduce
from reproduce import STUDY_WARMUP, WARMUP, WARMUPS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_MUON = "reproduce.py's cells include Muon: torch 2.9 or newer" if not hasattr(torch.optim, 'Muon') else ''


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    if NO_MUON:
        pytest.skip(NO_MUON)
    root = tmp_path_factory.mktemp('reproduce')
    data = root / 'data'
    (data / 'tinyshakespeare').mkdir(parents=True)
    (data / 'fashion_mnist').mkdir()
    rng = np.random.default_rng(0)
    words = ['the', 'king', 'shall', 'speak', 'thou', 'art', 'my', 'lord', 'and', 'not']
    (data / 'tinyshakespeare' / 'input.txt').write_text(' '.join(rng.choice(words, 6000)) + '\n')
    y = rng.integers(0, 10, 400)
    x = (rng.random((400, 28, 28)) * 60 + y[:, None, None] * 19).astype(np.uint8)  # brightness tells the class
    np.savez(data / 'fashion_mnist' / 'fashion_mnist.npz', x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    (data / 'cifar10_subset').mkdir()
    y = rng.integers(0, 10, 300)
    x = (rng.random((300, 32, 32, 3)) * 60 + y[:, None, None, None] * 19).astype(np.uint8)
    np.savez(data / 'cifar10_subset' / 'cifar10_subset.npz', x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    cmd = [sys.executable, 'reproduce.py', '--quick', '--data_root', str(data), '--out', str(root / 'runs')]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    results = root / 'runs' / 'results'
    return dict(first=first.stdout, second=second.stdout, results=results, cmd=cmd,
                report=json.loads((results / 'results.json').read_text()))


def test_ladder_cells_swept_and_seeded(quick):
    summary, runs = quick['report']['summary'], quick['report']['runs']
    for part, task, cells, budgets in (('ladder', 'lm', 6 + 4 + 4, (10, 20, 40)), ('vision', 'vision', 4, (10,))):
        assert {key.split('/')[0] for key in summary[part]} == {str(b) for b in budgets}
        assert len(summary[part]) == cells  # Muon only up to the sweep budget
        assert not any(not key.startswith('10/') and key.endswith('muon') for key in summary[part])
        for key, cell in summary[part].items():
            budget, name = key.split('/')
            assert f"{cell['best_lr']:g}" in cell['lr_sweep'] and len(cell['lr_sweep']) >= 2
            assert len(cell['per_seed']) == 2 and np.isfinite(cell['mean'])
            assert all(runs[r]['config']['max_iters'] == int(budget) for r in cell['runs'])
            best = cell['wd_sweep'][f"{cell['best_wd']:g}"]  # the sweep's run at the best lr and weight decay
            assert cell['per_seed'][0] == pytest.approx(best)
            if name.endswith('msgdw') and int(budget) == 10:
                assert len(cell['wd_sweep']) >= 3
    # above the sweep budget: the rung below's best lr and its grid neighbours, at its weight decay
    for name in ('dnt+msgdw', 'standard+adamw'):
        for short, long in ((10, 20), (20, 40)):
            below, cell = summary['ladder'][f'{short}/{name}'], summary['ladder'][f'{long}/{name}']
            assert f"{below['best_lr']:g}" in cell['lr_sweep'] and len(cell['lr_sweep']) in (2, 3)
            assert cell['best_wd'] == below['best_wd']


def test_every_run_recorded_with_config_and_curve(quick):
    runs = quick['report']['runs']
    assert len(runs) > 50
    for name, r in runs.items():
        cfg = r['config']
        assert cfg['warmup_iters'] in [round(w * cfg['max_iters']) for w in (WARMUP, *WARMUPS)]
        assert r['curve'][-1][0] == cfg['max_iters'] and r['curve'][0][0] == 0
        assert r['final_val_loss'] == r['curve'][-1][1] and r['best_val_loss'] == min(c[1] for c in r['curve'])
        assert r['wall_s'] > 0 and r['part']


def test_warmup_study(quick):
    summary, runs = quick['report']['summary'], quick['report']['runs']
    anchors, warmup = summary['warmup']['anchors'], summary['warmup']['tables']
    assert len(anchors) == 6 and all(len(c['per_seed']) == 2 for c in anchors.values())
    for cell in anchors.values():  # swept and seeded with the study's warmup, not the ladder's
        assert all(runs[r]['config']['warmup_iters'] == round(STUDY_WARMUP * runs[r]['config']['max_iters']) for r in cell['runs'])
    assert set(warmup) == {'standard+adamw', 'dnt+adamw', 'standard+msgdw', 'dnt+msgdw'}
    assert len(warmup['dnt+msgdw']) == 6 and len(warmup['dnt+adamw']) == 3
    assert all(v is None or np.isfinite(v) for table in warmup.values() for v in table.values())


def test_ablation_and_gradient_statistics(quick):
    ablation = quick['report']['summary']['ablation']
    assert len(ablation) == 6 and all(np.isfinite(a['best_val_loss']) for a in ablation.values())
    for run in quick['report']['runs'].values():
        assert [g['iter'] for g in run['grad_stats']] == [0, run['config']['max_iters'] // 2]
        assert all(g['p999_over_median'] >= 1 and g['kurtosis'] > 0 for g in run['grad_stats'])


def test_regularizer_study(quick):
    """Both pairs swept with every regularizer on, then all off and each one off at that lr; all on and all off
    seeded; every run scored on its training images too, the EMA beside the weights where there is one."""
    study, runs = quick['report']['summary']['regularizers'], quick['report']['runs']
    assert set(study) == {'standard+adamw', 'dnt+msgdw'}
    for cell, c in study.items():
        assert f"{c['best_lr']:g}" in c['lr_sweep'] and len(c['lr_sweep']) >= 2
        assert list(c['variants']) == ['all on', 'all off', 'no drop_path', 'no 3-Augment', 'no random erasing',
                                       'all on, 20 iterations', 'all off, 20 iterations']
        for name, v in c['variants'].items():  # seeded: all on and all off, and both at the longest budget
            assert len(v['runs']) == (2 if name.startswith(('all on', 'all off')) else 1)
            for r in (runs[n] for n in v['runs']):
                cfg = r['config']
                assert cfg['max_iters'] == (20 if name.endswith('20 iterations') else 10)
                assert cfg['learning_rate'] == c['best_lr'] and f"{cfg['preset']}+{cfg['opt']}" == cell
                on = dict(drop_path=cfg['drop_path'] > 0, three_augment=cfg['three_augment'] and cfg['color_jitter'] > 0,
                          random_erasing=cfg['random_erasing'] > 0, ema=cfg['ema_decay'] > 0)
                off = {'all on': set(), 'all off': set(on), 'no drop_path': {'drop_path'}, 'no 3-Augment': {'three_augment'},
                       'no random erasing': {'random_erasing'}}[name.split(',')[0]]
                assert {k for k, v in on.items() if not v} == off
                assert set(r['train_scores']) == ({'raw', 'ema'} if on['ema'] else {'raw'})
                assert all(0 <= s['acc'] <= 1 and s['loss'] > 0 for s in r['train_scores'].values())
                assert [e[0] for e in r['ema_curve']] == ([c[0] for c in r['curve']] if on['ema'] else [])
                assert r['final_val_acc'] == r['curve'][-1][2]
        assert v['mean'] == pytest.approx(np.mean([runs[n]['final_val_acc'] for n in v['runs']]))


def test_four_cells_tuned_at_their_budget(quick):
    """The four cells on the CIFAR-10 subset at the longest budget with every regularizer off: lr, weight decay
    (mSGDW's from 1e-4..1e-2, AdamW's 0.05/0.1/0.3), the lr again where the weight decay moved, then seeds."""
    cells, runs = quick['report']['summary']['cells'], quick['report']['runs']
    assert set(cells) == {f'20/{p}+{o}' for p, o in reproduce.CELLS['cifar']}
    for key, c in cells.items():
        optimizer = key.split('+')[1]
        assert f"{c['best_lr']:g}" in {**c['lr_sweep'], **c['lr_sweep_at_best_wd']} and len(c['lr_sweep']) >= 2
        assert set(c['wd_sweep']) >= ({'0.0001', '0.001', '0.01'} if optimizer == 'msgdw' else {'0.05', '0.1', '0.3'})
        assert bool(c['lr_sweep_at_best_wd']) == (c['best_wd'] != reproduce.WEIGHT_DECAY[optimizer])
        assert len(c['per_seed']) == 2
        for r in (runs[n] for n in c['runs']):
            cfg = r['config']
            assert (cfg['max_iters'], cfg['learning_rate'], cfg['weight_decay']) == (20, c['best_lr'], c['best_wd'])
            assert not any(cfg[k] for k in reproduce.NO_REGULARIZERS)


def test_width_study_and_lion(quick):
    summary, runs = quick['report']['summary'], quick['report']['runs']
    for task, width in (('lm', 32), ('cifar', 32)):
        points = summary['width'][task]
        assert set(points) == {f'{w}/{p}+{o}' for w in (32, 64) for p, o in reproduce.WIDTH_CELLS}
        for p, o in reproduce.WIDTH_CELLS:  # the default width is the tuned cell; the other one its own lr sweep
            assert points[f'32/{p}+{o}']['per_seed'] == (summary['cells'][f'20/{p}+{o}'] if task == 'cifar' else
                                                         summary['ladder'][f'10/{p}+{o}'])['per_seed']
            wide = points[f'64/{p}+{o}']
            assert len(wide['lr_sweep']) >= 2 and len(wide['per_seed']) in (1, 2)
            assert all((runs[n]['config']['n_embd'], runs[n]['config']['n_head']) == (64, 4) for n in wide['runs'])
            assert all('_w64_' in n for n in wide['runs']) and not any('_w64_' in n for n in points[f'32/{p}+{o}']['runs'])
        lion = summary['lion'][task]
        assert set(lion) == {f"{10 if task == 'lm' else 20}/{p}+lion" for p in ('standard', 'dnt')}
        for c in lion.values():
            assert all(runs[n]['config']['opt'] == 'lion' and runs[n]['config']['beta2'] == 0.99 for n in c['runs'])


def test_a_part_tabulates_each_task_whose_runs_are_all_recorded(capsys):
    def study(task):
        if task == 'cifar':
            raise reproduce.MissingRun('cifar3000_dnt_msgdw_lr0.01_wd1e-05_wu0.2_w256_reg-none_s1337')
        return {'128/dnt+msgdw': task}
    assert reproduce.by_task('width', study) == {'lm': {'128/dnt+msgdw': 'lm'}}
    assert 'width, cifar: not complete yet' in capsys.readouterr().out


def test_gap_closed_is_a_ratio_of_differences_in_either_direction():
    # ViT-L: mSGDW's gap of 3.5 points, 3.3 of them closed; a loss closes the same way, below AdamW passes it
    assert reproduce.gap_closed(81.7, 78.2, 81.5) == pytest.approx(3.3 / 3.5)
    assert reproduce.gap_closed(2.0, 2.4, 2.2) == pytest.approx(0.5)
    assert reproduce.gap_closed(2.0, 2.4, 1.9) == pytest.approx(1.25) and reproduce.gap_closed(2.0, 2.4, 2.4) == 0


def test_tune_sweeps_the_lr_again_where_the_weight_decay_moved():
    """Made-up scores: the best lr depends on the weight decay (lr x wd fixed), and a tie keeps the wd it has."""
    class Runner:
        def run_all(self, named):
            return [dict(diverged=False, final_val_acc=1 - abs(math.log10(a['learning_rate'] * a['weight_decay'] / 1e-5)) / 100
                         - abs(math.log10(a['weight_decay'] / 1e-2)) / 10) for a in named.values()]
    base = dict(task='cifar', preset='dnt', opt='msgdw', weight_decay=1e-3, momentum=0.9, max_iters=100,
                warmup_iters=20, seed=reproduce.SEED, **reproduce.NO_REGULARIZERS)
    cell = reproduce.tune(Runner(), reproduce.SCALES['full'], base, [3e-3, 1e-2, 3e-2], 3)
    assert list(cell['lr_sweep']) == ['0.003', '0.01', '0.03']  # best 1e-2 at wd 1e-3
    assert list(cell['wd_sweep']) == ['0.0001', '0.001', '0.01', '0.1']  # 1e-2, bracketed after one extension
    assert list(cell['lr_sweep_at_best_wd']) == ['0.0003', '0.001', '0.003', '0.01', '0.03']  # from 1e-2 down to 1e-3
    assert (cell['best_wd'], cell['best_lr'], len(cell['per_seed'])) == (1e-2, 1e-3, 3)


def test_memory_table(quick):
    memory = quick['report']['memory']
    assert memory['msgdw'] == 4 * memory['params'] and memory['adamw'] == 2 * memory['msgdw']
    assert memory['msgdw'] < memory['muon'] < memory['adamw']  # AdamW's two moments only for embeddings and vectors


def test_tables_and_figures_written(quick):
    text = (quick['results'] / 'results.md').read_text()
    for heading in ('budget ladder', 'gap to standard + AdamW (nats', 'Warmup and momentum', 'Ablation', 'Fashion-MNIST',
                    'gap to standard + AdamW (points', 'CIFAR-10 subset ViT: regularizers', 'the four cells, regularizers off',
                    "DNT closes most of mSGDW's gap", 'paper: ViT-L 307M, ImageNet top-1 | | 0.94',
                    'The gap against width: Tiny Shakespeare', 'The gap against width: CIFAR-10', '| fraction closed |',
                    '| train top-1, DNT + mSGDW |', 'Lion, CIFAR-10 subset ViT',
                    'What each cell fits against what it generalizes', 'Gradient tails, cifar',
                    'Optimizer state', 'Wall time', 'Every recorded run'):
        assert heading in text
    pytest.importorskip('matplotlib')
    for figure in ('gap_vs_tokens.png', 'gap_vs_width.png', 'curves.png', 'lr_basin.png', 'warmup.png', 'grad_hist_lm.png', 'ablation.png', 'vision.png'):
        assert (quick['results'] / figure).stat().st_size > 1000


def test_second_run_trains_nothing(quick):
    assert 'best val loss' in quick['first']
    assert 'best val loss' not in quick['second']  # every run was found finished and reused


def test_check_trains_a_recorded_run_again_and_finds_a_changed_number(quick, tmp_path):
    name, run = next((n, r) for n, r in quick['report']['runs'].items() if r['config']['task'] == 'lm' and len(r['curve']) > 2)
    cut = run['curve'][1][0]
    r = subprocess.run(quick['cmd'] + ['--check', f'{name}@{cut}'], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"{name} to iter {cut} (" in r.stdout and f"equal to the record at every eval (0, {cut})" in r.stdout
    report = json.loads(json.dumps(quick['report']))
    report['runs'][name]['curve'][1][1] += 1e-7  # a record one rounding step off
    (tmp_path / 'results.json').write_text(json.dumps(report))
    r = subprocess.run(quick['cmd'] + ['--results', str(tmp_path), '--check', f'{name}@{cut}'], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and f"differs from the record at iter {cut}" in r.stdout
    r = subprocess.run(quick['cmd'] + ['--check', 'no_such_run'], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("reproduce.py: error: --check: 'no_such_run'")


@pytest.mark.skipif(bool(NO_MUON), reason=NO_MUON)
def test_tables_only_trains_nothing(tmp_path):
    r = subprocess.run([sys.executable, 'reproduce.py', '--quick', '--tables_only', '--out', str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'not complete yet' in r.stdout and not (tmp_path / 'data').exists()
    assert 'Optimizer state' in (tmp_path / 'results' / 'results.md').read_text()


def test_refused_in_one_line_on_an_older_torch(tmp_path):
    no_muon = ("import runpy, sys, torch; vars(torch.optim).pop('Muon', None); sys.argv.pop(0); "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, '-c', no_muon, 'reproduce.py', '--quick', '--tables_only', '--out', str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("reproduce.py: error: its cells include Muon, which needs torch 2.9")
    assert len(r.stderr.splitlines()) == 1 and not any(tmp_path.iterdir())


def test_a_cut_run_resumes_and_is_timed_as_a_whole(tmp_path, monkeypatch):
    text = tmp_path / 'input.txt'
    text.write_text('to be or not to be, that is the question\n' * 300)
    data = tmp_path / 'data'
    subprocess.run([sys.executable, 'prepare_data.py', 'shakespeare_char', '--input', str(text), '--out_dir', str(data)],
                   cwd=REPO, check=True, capture_output=True)
    runner = reproduce.Runner(str(tmp_path / 'runs'), str(tmp_path / 'results.json'), {'lm': str(data)}, jobs=1)
    base = {'task': 'lm', **reproduce.COMMON, **reproduce.SCALES['quick']['lm'], 'momentum': 0.9, 'seed': reproduce.SEED}
    args = reproduce.finalize({**reproduce.with_budget(base, 20), 'preset': 'dnt', 'opt': 'adamw',
                               'learning_rate': 1e-3, 'weight_decay': 0.1})
    name = reproduce.run_name(args)
    monkeypatch.chdir(REPO)  # train.py is run from the repository
    runner.train_run(name, {**args, 'max_iters': 10})  # the first half of the run's schedule, as if cut at 10
    del runner.runs[name]
    monkeypatch.setattr(reproduce, 'time', types.SimpleNamespace(time=iter([100.0, 130.0]).__next__))
    record = runner.run(name, args)  # finds the checkpoint at 10 and trains on to 20
    assert record['resumed_from'] == 10 and record['config'] == args
    assert [c[0] for c in record['curve']] == [0, 10, 20]  # one curve across both segments
    assert record['wall_s'] == 60.0  # the 30 s of iterations 10..20, scaled to the whole run


class ScoredRunner:
    """Trains nothing: a run's best val loss is its lr's distance, in decades, from an optimum that moves
    with the budget."""

    def __init__(self, best_lr):
        self.best_lr = best_lr

    def run_all(self, named):
        return [dict(diverged=False, best_val_loss=1 + abs(math.log10(a['learning_rate'] / self.best_lr[a['max_iters']])))
                for a in named.values()]


def test_rungs_above_the_sweep_start_from_the_rung_below_and_extend_until_bracketed():
    runner = ScoredRunner({1500: 1e-2, 5000: 1e-3, 15000: 3e-4})  # the optimum falls as the run grows
    ctx = dict(scale=reproduce.SCALES['full'], sweep_budget={'lm': 1500}, rungs={'lm': [400, 1500, 5000, 15000]},
               bases={'lm': {'task': 'lm', 'momentum': 0.9, 'seed': reproduce.SEED}})
    long = reproduce.run_cell(runner, ctx, 'lm', 5000, 'dnt', 'adamw')
    # 1,500's best (1e-2) and its neighbours, then two steps down to bracket 5,000's best
    assert list(long['lr_sweep']) == ['0.0003', '0.001', '0.003', '0.01', '0.03'] and long['best_lr'] == 1e-3
    assert len(long['per_seed']) == 2
    longer = reproduce.run_cell(runner, ctx, 'lm', 15000, 'dnt', 'adamw')
    # 5,000's best (1e-3) and its neighbours, then one step down to bracket 15,000's best
    assert list(longer['lr_sweep']) == ['0.0001', '0.0003', '0.001', '0.003'] and longer['best_lr'] == 3e-4
    assert len(longer['per_seed']) == 2


def test_gaps_to_adamw_in_tables_for_both_tasks():
    cell = lambda mean, std: dict(mean=mean, std=std, per_seed=[mean], best_lr=0.1, best_wd=1e-3, lr_sweep={}, wd_sweep={})
    cells = {'100/standard+adamw': cell(0.80, 0.03), '100/dnt+msgdw': cell(0.83, 0.04),
             '300/standard+adamw': cell(0.90, 0.0), '300/dnt+msgdw': cell(0.85, 0.01),
             '900/dnt+msgdw': cell(0.95, 0.01)}  # no reference at 900: no gap there
    gaps = reproduce.gaps_to_adamw(cells)
    assert list(gaps) == ['dnt+msgdw']
    (b1, g1, e1), (b2, g2, e2) = gaps['dnt+msgdw']
    assert (b1, b2) == (100, 300)
    assert g1 == pytest.approx(0.03) and e1 == pytest.approx(0.05) and g2 == pytest.approx(-0.05) and e2 == pytest.approx(0.01)
    lines = []
    reproduce.cell_tables('vision', cells, lines, lambda b: f'{b} iters')
    row = next(line for line in lines if line.startswith('| DNT + mSGDW | +'))
    assert row == '| DNT + mSGDW | +3.00 ± 5.00 | -5.00 ± 1.00 |  |'  # points of top-1, in the budgets' order
