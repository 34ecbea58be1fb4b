"""reproduce.py --quick end to end on data the test writes: sweeps, seeds, ablation, tables, figures, and
that a second run reuses every finished run instead of training again."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
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
    cmd = [sys.executable, 'reproduce.py', '--quick', '--data_root', str(data), '--out', str(root / 'runs')]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    results = root / 'runs' / 'results'
    return dict(first=first.stdout, second=second.stdout, results=results,
                report=json.loads((results / 'results.json').read_text()))


def test_every_cell_swept_and_seeded(quick):
    for task in ('lm', 'vision'):
        cells = quick['report'][task]['cells']
        assert set(cells) == {'standard+adamw', 'dnt+adamw', 'standard+msgdw', 'dnt+msgdw'}
        for name, cell in cells.items():
            assert len(cell['lr_sweep']) >= 2
            assert f"{cell['best_lr']:g}" in cell['lr_sweep']
            assert len(cell['per_seed']) == 2 and np.isfinite(cell['mean'])
            if name.endswith('msgdw'):
                assert len(cell['wd_sweep']) == 2
            best = cell['wd_sweep'][f"{cell['best_wd']:g}"]  # the run at the best lr and weight decay
            assert cell['per_seed'][0] == pytest.approx(best['best_val_acc' if task == 'vision' else 'best_val_loss'])


def test_ablation_and_gradient_statistics(quick):
    ablation = quick['report']['lm']['ablation']
    assert len(ablation) == 6 and all(np.isfinite(a['best_val_loss']) for a in ablation.values())
    for cell, tail in quick['report']['lm']['grad_tail'].items():
        assert tail, cell  # grad_stats_interval logged something
        assert all(t['p999_over_median'] >= 1 and t['kurtosis'] > 0 for t in tail.values())


def test_memory_table_counts_one_buffer_against_two(quick):
    memory = quick['report']['memory']
    assert memory['msgdw'] == 4 * memory['params'] and memory['adamw'] == 2 * memory['msgdw']


def test_tables_and_figures_written(quick):
    text = (quick['results'] / 'results.md').read_text()
    for heading in ('Tiny Shakespeare', 'Fashion-MNIST', 'Ablation', 'Optimizer state'):
        assert heading in text
    pytest.importorskip('matplotlib')
    for figure in ('curves.png', 'grad_hist_lm.png', 'grad_hist_vision.png', 'ablation.png'):
        assert (quick['results'] / figure).stat().st_size > 1000


def test_second_run_trains_nothing(quick):
    assert 'best val loss' in quick['first']
    assert 'best val loss' not in quick['second']  # every run was found finished and reused
