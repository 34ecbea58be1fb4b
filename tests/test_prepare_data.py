"""
Tests for prepare_data.py. Every input is written here into tmp_path; no network, no shared data.
Run: python -m pytest -q tests/test_prepare_data.py
"""
import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import prepare_data as pd
from data import DataError, get_tokenizer, load_images, load_meta

SCRIPT = Path(__file__).resolve().parent.parent / 'prepare_data.py'
TEXT = "First Citizen:\nBefore we proceed — any further, hear me speak. Café, naïve!\n\n" * 30 + "Exeunt.\r\n"  # \r kept

def run(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)

def snapshot(d):
    """Every file under d with its bytes (and every directory), to check that nothing changed."""
    return {p.relative_to(d).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(Path(d).rglob('*'))}

def assert_clean_failure(r, out_dir):
    assert r.returncode != 0
    assert r.stderr.startswith('prepare_data.py: error: ') and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'Traceback' not in r.stderr
    assert not out_dir.exists()
    assert not list(out_dir.parent.glob(f'.{out_dir.name}.*')), "temporary directory left behind"

def read_tokens(d, split):
    return np.fromfile(d / f'{split}.bin', dtype=np.uint16)

# ----------------------------------------------------------------------------------------
# text

def test_shakespeare_char_from_input(tmp_path):
    src, out = tmp_path / 'input.txt', tmp_path / 'data' / 'sc'
    src.write_text(TEXT, encoding='utf-8')
    r = run('shakespeare_char', '--input', src, '--out_dir', out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ['meta.json', 'train.bin', 'val.bin']
    meta = load_meta(out)
    assert meta['kind'] == 'text' and meta['tokenizer'] == 'char'
    assert meta['itos'] == sorted(set(TEXT)) and meta['vocab_size'] == len(set(TEXT))
    n = int(0.9 * len(TEXT))
    train, val = read_tokens(out, 'train'), read_tokens(out, 'val')
    assert (meta['train_tokens'], meta['val_tokens']) == (len(train), len(val)) == (n, len(TEXT) - n)
    encode, decode = get_tokenizer(meta)
    assert decode(train) + decode(val) == TEXT
    assert encode('— é') == [meta['itos'].index(c) for c in '— é'] and decode(encode(TEXT)) == TEXT
    assert f"vocab_size {len(set(TEXT))}" in r.stdout

def test_char_encode_unknown_characters():
    encode, decode = get_tokenizer({'kind': 'text', 'tokenizer': 'char', 'itos': list('\n abc')})
    assert decode(encode('abc a\n')) == 'abc a\n'
    with pytest.raises(ValueError, match=r"characters not in the vocabulary: 'Z', '@'"):
        encode('abZ@cZ')

def test_load_meta_missing_names_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"python prepare_data\.py shakespeare_char --out_dir"):
        load_meta(tmp_path / 'shakespeare_char')

def test_shakespeare_bpe(tmp_path):
    tiktoken = pytest.importorskip('tiktoken')
    try:  # online, or offline from $TIKTOKEN_CACHE_DIR, which tiktoken reads itself
        enc = tiktoken.get_encoding('gpt2')
    except Exception as e:
        pytest.skip(f"tiktoken cannot load gpt2 here (offline, no TIKTOKEN_CACHE_DIR?): {type(e).__name__}")
    src, out = tmp_path / 'input.txt', tmp_path / 'data' / 'shakespeare'
    src.write_text(TEXT, encoding='utf-8')
    r = run('shakespeare', '--input', src, '--out_dir', out)
    assert r.returncode == 0, r.stderr
    meta = load_meta(out)
    assert meta['tokenizer'] == 'gpt2' and meta['vocab_size'] == 50257 and 'itos' not in meta
    n = int(0.9 * len(TEXT))
    train, val = read_tokens(out, 'train'), read_tokens(out, 'val')
    assert train.tolist() == enc.encode_ordinary(TEXT[:n]) and val.tolist() == enc.encode_ordinary(TEXT[n:])
    assert (meta['train_tokens'], meta['val_tokens']) == (len(train), len(val))
    encode, decode = get_tokenizer(meta)
    assert decode(train) + decode(val) == TEXT and encode('Café') == enc.encode_ordinary('Café')
    assert encode('<|endoftext|>Hello') == [enc.eot_token, 15496]  # in a prompt, the EOT token (nanoGPT's [50256, 15496])

def byte_level_encoding():
    """A tiktoken Encoding over raw bytes with GPT-2's EOT token: stands in for the GPT-2 BPE files offline."""
    import tiktoken
    return tiktoken.Encoding('bytes', pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={'<|endoftext|>': 256})

def test_openwebtext_from_local_parquet(tmp_path, monkeypatch):
    """OpenWebText as the hub publishes it (data/train-0000K-of-0000N.parquet, one 'text' column), through the
    real path: datasets' parquet builder, the split, tokenizing in 2 processes, the sharded writer."""
    pytest.importorskip('datasets')
    pq, pa = pytest.importorskip('pyarrow.parquet'), pytest.importorskip('pyarrow')
    docs = [f"Document {i}: " + "words and more words, café. " * (i % 7 + 1) for i in range(40)]
    src = tmp_path / 'owt'
    (src / 'data').mkdir(parents=True)
    for k, part in enumerate((docs[:25], docs[25:])):
        pq.write_table(pa.table({'text': part}), src / 'data' / f'train-0000{k}-of-00002.parquet')
    monkeypatch.setattr(pd, 'gpt2_encoding', byte_level_encoding)
    out = tmp_path / 'data' / 'openwebtext'
    pd.main(['openwebtext', '--input', str(src), '--out_dir', str(out), '--num_proc', '2'])
    meta = load_meta(out)
    assert meta['kind'] == 'text' and meta['tokenizer'] == 'gpt2' and meta['vocab_size'] == 257
    got = {}
    for split in ('train', 'val'):
        ids = read_tokens(out, split)
        assert ids[-1] == 256 and meta[f'{split}_tokens'] == len(ids)  # every document ends with EOT
        got[split] = np.where(ids == 256, 0, ids).astype(np.uint8).tobytes().decode().split('\0')[:-1]  # EOT -> NUL
    assert len(got['val']) == 1  # 0.05% of 40 documents, rounded up, as in nanoGPT
    assert sorted(got['train'] + got['val']) == sorted(docs)
    assert sorted(os.listdir(tmp_path / 'data')) == ['downloads', 'openwebtext']  # the datasets cache: --cache_dir's default

def test_openwebtext_input_without_parquet(tmp_path):
    pytest.importorskip('datasets')
    (tmp_path / 'owt').mkdir()
    out = tmp_path / 'data' / 'openwebtext'
    r = run('openwebtext', '--input', tmp_path / 'owt', '--out_dir', out)
    assert_clean_failure(r, out)
    assert 'no .parquet files' in r.stderr and 'hf download Skylion007/openwebtext' in r.stderr

# ----------------------------------------------------------------------------------------
# downloads: a local HTTP server stands in for the real URL

@contextmanager
def serve(body):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f'http://127.0.0.1:{srv.server_port}/input.txt'
    finally:
        srv.shutdown()
        srv.server_close()

@pytest.fixture
def no_proxy(monkeypatch):
    for var in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)

def test_download_then_cache(tmp_path, monkeypatch, no_proxy, capsys):
    pytest.importorskip('requests')
    body = TEXT.encode()
    cache = tmp_path / 'cache'
    with serve(body) as url:
        monkeypatch.setitem(pd.DOWNLOADS, 'tinyshakespeare.txt', (url, hashlib.md5(body).hexdigest()))
        pd.main(['shakespeare_char', '--out_dir', str(tmp_path / 'a'), '--cache_dir', str(cache)])
    assert os.listdir(cache) == ['tinyshakespeare.txt'] and (cache / 'tinyshakespeare.txt').read_bytes() == body
    # the server is gone now: a second run must work from the cache alone
    pd.main(['shakespeare_char', '--out_dir', str(tmp_path / 'b'), '--cache_dir', str(cache)])
    assert 'using cached' in capsys.readouterr().out
    assert (tmp_path / 'a' / 'train.bin').read_bytes() == (tmp_path / 'b' / 'train.bin').read_bytes()
    # and without the cache the dead URL fails in one line, leaving nothing behind
    with pytest.raises(SystemExit, match=r'^prepare_data\.py: error: download of .* failed') as e:
        pd.main(['shakespeare_char', '--out_dir', str(tmp_path / 'c'), '--cache_dir', str(tmp_path / 'cache2')])
    assert '\n' not in str(e.value.code) and not (tmp_path / 'c').exists()
    assert not (tmp_path / 'cache2').exists()  # no empty download folder either

def test_checksum_mismatch(tmp_path, monkeypatch, no_proxy):
    pytest.importorskip('requests')
    out, cache = tmp_path / 'data' / 'sc', tmp_path / 'data' / 'downloads'  # default cache: next to out_dir
    with serve(b'not what we expected') as url:
        monkeypatch.setitem(pd.DOWNLOADS, 'tinyshakespeare.txt', (url, hashlib.md5(TEXT.encode()).hexdigest()))
        with pytest.raises(SystemExit, match=r'^prepare_data\.py: error: checksum mismatch') as e:
            pd.main(['shakespeare_char', '--out_dir', str(out)])
    assert '\n' not in str(e.value.code)
    assert not out.exists() and not cache.exists()  # no dataset, no (partial) download, no empty download folder
    assert not out.parent.exists()  # nor the data folder it made for them

# ----------------------------------------------------------------------------------------
# CIFAR-10: a tiny archive in the real layout

CIFAR_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']

def write_cifar(path, batches):
    """batches: member name -> object, pickled like the real files (protocol 3 writes bytes as bytes, as py2 did)."""
    with tarfile.open(path, 'w:gz') as tar:
        for name, obj in batches.items():
            data = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=3)
            info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

def cifar_batches(rng, sizes):
    out = {}
    for name, n in sizes.items():
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # each row: R plane, G plane, B plane, row-major
        labels = [int(v) for v in rng.integers(0, 10, n)]
        out[name] = {b'batch_label': name.encode(), b'labels': labels, b'data': rows,
                     b'filenames': [f'{name}_{i}.png'.encode() for i in range(n)]}
    out['batches.meta'] = {b'label_names': [c.encode() for c in CIFAR_CLASSES], b'num_cases_per_batch': 2, b'num_vis': 3072}
    return out

def test_cifar10_parser(tmp_path):
    rng = np.random.default_rng(0)
    batches = cifar_batches(rng, {**{f'data_batch_{i}': 2 for i in range(1, 6)}, 'test_batch': 3})
    rows = batches['data_batch_1'][b'data']
    rows[0, [0 * 1024 + 5 * 32 + 7, 1 * 1024 + 5 * 32 + 7, 2 * 1024 + 5 * 32 + 7]] = [201, 102, 53]  # pixel (h=5, w=7)
    arc, out = tmp_path / 'cifar.tar.gz', tmp_path / 'data' / 'cifar10'
    write_cifar(arc, batches)
    r = run('cifar10', '--input', arc, '--out_dir', out)
    assert r.returncode == 0, r.stderr
    meta = load_meta(out)
    x, y = load_images(out, 'train')
    xv, yv = load_images(out, 'val')
    assert x.shape == (10, 32, 32, 3) and xv.shape == (3, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and yv.dtype == np.int64
    assert x[0, 5, 7].tolist() == [201, 102, 53]
    assert y.tolist() == sum((batches[f'data_batch_{i}'][b'labels'] for i in range(1, 6)), [])
    assert yv.tolist() == batches['test_batch'][b'labels']
    assert meta['class_names'] == CIFAR_CLASSES and meta['num_classes'] == 10 and meta['shape'] == [32, 32, 3]
    assert (meta['train_size'], meta['val_size']) == (10, 3)
    np.testing.assert_allclose(meta['mean'], (x / 255).mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(meta['std'], (x / 255).std(axis=(0, 1, 2)), rtol=1e-9)

def test_cifar10_old_numpy_pickles_load():
    # the real files name numpy.core.multiarray (numpy < 2), current numpy writes numpy._core
    data = pickle.dumps({b'data': np.arange(6, dtype=np.uint8)}, protocol=3).replace(b'numpy._core.', b'numpy.core.')
    assert b'numpy.core.multiarray' in data
    assert pd.safe_unpickle(data)[b'data'].tolist() == list(range(6))

class Evil:
    def __init__(self, marker):
        self.marker = marker
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))

def test_cifar10_malicious_pickle_refused(tmp_path):
    marker = tmp_path / 'pwned'
    with pytest.raises(pickle.UnpicklingError, match='refusing'):
        pd.safe_unpickle(pickle.dumps(Evil(marker)))
    assert not marker.exists()
    batches = cifar_batches(np.random.default_rng(0), {**{f'data_batch_{i}': 1 for i in range(1, 6)}, 'test_batch': 1})
    batches['data_batch_1'] = pickle.dumps({b'data': Evil(marker), b'labels': [0]}, protocol=3)
    arc, out = tmp_path / 'cifar.tar.gz', tmp_path / 'data' / 'cifar10'
    write_cifar(arc, batches)
    r = run('cifar10', '--input', arc, '--out_dir', out)
    assert_clean_failure(r, out)
    assert 'refusing to load' in r.stderr and not marker.exists()

# ----------------------------------------------------------------------------------------
# Fashion-MNIST: tiny IDX files

def write_idx_gz(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, dtype='>i4').tobytes()
    with gzip.open(path, 'wb') as f:
        f.write(header + arr.astype(np.uint8).tobytes())

def test_fashion_mnist_idx(tmp_path):
    rng = np.random.default_rng(1)
    src, out = tmp_path / 'fmnist', tmp_path / 'data' / 'fashion_mnist'
    src.mkdir()
    xs = {'train': rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), 'val': rng.integers(0, 256, (2, 5, 3), dtype=np.uint8)}
    ys = {'train': np.array([9, 0, 3, 9]), 'val': np.array([1, 7])}
    for split, (fx, fy) in pd.FMNIST_FILES.items():
        write_idx_gz(src / fx, xs[split])
        write_idx_gz(src / fy, ys[split])
    r = run('fashion_mnist', '--input', src, '--out_dir', out)
    assert r.returncode == 0, r.stderr
    meta = load_meta(out)
    assert meta['shape'] == [5, 3, 1] and meta['num_classes'] == 10 and meta['class_names'][9] == 'Ankle boot'
    for split in ('train', 'val'):
        x, y = load_images(out, split)
        assert x.shape == xs[split].shape + (1,) and (x[..., 0] == xs[split]).all()
        assert y.dtype == np.int64 and y.tolist() == ys[split].tolist()
    np.testing.assert_allclose(meta['mean'], [xs['train'].mean() / 255])
    # a truncated file fails in one line
    (src / pd.FMNIST_FILES['val'][0]).write_bytes(gzip.compress(b'\x00\x00\x08\x03' + np.array([2, 5, 3], '>i4').tobytes() + b'x'))
    assert_clean_failure(run('fashion_mnist', '--input', src, '--out_dir', tmp_path / 'data' / 'fm2'), tmp_path / 'data' / 'fm2')

# ----------------------------------------------------------------------------------------
# npz import and clean failures

@pytest.mark.parametrize('channels', [None, 3])
def test_npz_import(tmp_path, channels):
    rng = np.random.default_rng(2)
    shape = (6, 4) if channels is None else (6, 4, channels)
    a = dict(x_train=rng.integers(0, 256, (5, *shape), dtype=np.uint8), y_train=np.array([0, 1, 2, 1, 0], dtype=np.uint8),
             x_test=rng.integers(0, 256, (2, *shape), dtype=np.uint8), y_test=np.array([2, 2]))
    if channels:
        a['class_names'] = np.array(['cat', 'dog', 'frog'])
    src = tmp_path / 'mine.npz'
    np.savez_compressed(src, **a)
    out = tmp_path / 'data' / 'mine'
    r = run('npz', '--input', src, '--out_dir', out)
    assert r.returncode == 0, r.stderr
    meta = load_meta(out)
    assert meta['shape'] == [6, 4, channels or 1] and meta['num_classes'] == 3
    assert meta['class_names'] == (['cat', 'dog', 'frog'] if channels else ['0', '1', '2'])
    x, y = load_images(out, 'train')
    assert x.shape == (5, 6, 4, channels or 1) and (x.reshape(a['x_train'].shape) == a['x_train']).all()
    assert y.dtype == np.int64 and y.tolist() == a['y_train'].tolist()
    assert len(meta['mean']) == len(meta['std']) == (channels or 1)
    # a failing re-run keeps the old dataset intact
    bad = tmp_path / 'bad.npz'
    np.savez(bad, x_train=a['x_train'])
    assert_clean_failure(run('npz', '--input', bad, '--out_dir', tmp_path / 'data' / 'other'), tmp_path / 'data' / 'other')
    assert run('npz', '--input', bad, '--out_dir', out).returncode != 0 and load_meta(out) == meta
    assert sorted(os.listdir(tmp_path / 'data')) == ['mine']

def _malformed(tmp_path, kind):
    x, y = np.zeros((3, 4, 4), np.uint8), np.array([0, 1, 1])
    arrays = dict(x_train=x, y_train=y, x_test=x, y_test=y)
    if kind == 'missing_key':
        del arrays['y_test']
    elif kind == 'wrong_dtype':
        arrays['x_train'] = x.astype(np.float32)
    elif kind == 'label_range':
        arrays['class_names'] = np.array(['a'])
    elif kind == 'length_mismatch':
        arrays['y_train'] = y[:2]
    elif kind == 'negative_label':
        arrays['y_train'] = np.array([0, -1, 1])
    path = tmp_path / f'{kind}.npz'
    if kind == 'not_npz':
        path.write_text('hello')
    else:
        np.savez(path, **arrays)
    return ['npz', '--input', path]

@pytest.mark.parametrize('kind, words', [
    ('missing_key', 'y_test'), ('wrong_dtype', 'images must be uint8'), ('label_range', 'labels must be 0..0, got 0..1'),
    ('negative_label', 'labels must be 0 or more, got -1..1'), ('length_mismatch', 'labels must be 3 integers'),
    ('not_npz', ''), ('unknown_name', 'unknown dataset'), ('no_input', '--input')])
def test_clean_failure(tmp_path, kind, words):
    out = tmp_path / 'data' / 'ds'
    args = {'unknown_name': ['imagenet_please'], 'no_input': ['npz']}.get(kind) or _malformed(tmp_path, kind)
    r = run(*args, '--out_dir', out)
    assert_clean_failure(r, out)
    assert words in r.stderr, r.stderr
    if kind == 'unknown_name':
        assert 'shakespeare_char' in r.stderr

# ----------------------------------------------------------------------------------------
# what an out_dir may replace, and inputs too small or not text: one line, every file as it was

def _setup(tmp_path, case):
    """(arguments, cwd) for one bad invocation; tmp_path holds a good dataset in data/sc and other files."""
    src, sc = tmp_path / 'input.txt', tmp_path / 'data' / 'sc'
    src.write_text(TEXT, encoding='utf-8')
    assert run('shakespeare_char', '--input', src, '--out_dir', sc).returncode == 0
    clone = tmp_path / 'clone'  # a checkout with history and a subfolder
    (clone / '.git').mkdir(parents=True)
    (clone / '.git' / 'HEAD').write_text('ref: refs/heads/main\n')
    (clone / 'sub').mkdir()
    (clone / 'train.py').write_text('print(1)\n')
    (tmp_path / 'mydata' / 'other_dataset').mkdir(parents=True)
    (tmp_path / 'mydata' / 'other_dataset' / 'important.txt').write_text('keep me')
    shutil.copytree(sc, tmp_path / 'data' / 'sc_plus')
    (tmp_path / 'data' / 'sc_plus' / 'notes.txt').write_text('mine')
    inputs = {'empty_input': b'', 'two_chars': b'ab', 'binary_input': bytes(range(256)) * 4}
    if case in inputs:
        (tmp_path / case).write_bytes(inputs[case])
        return ['shakespeare_char', '--input', tmp_path / case, '--out_dir', sc], None
    os.symlink(sc, tmp_path / 'link_ds')
    if case == 'symlink_slash':  # 'link_ds/' names the directory the link points to: the link is what is judged
        return ['shakespeare_char', '--input', src, '--out_dir', f'{tmp_path / "link_ds"}/'], None
    out_dir, cwd = {'unrelated_dir': (tmp_path / 'mydata', None), 'dataset_plus_file': (tmp_path / 'data' / 'sc_plus', None),
                    'out_dir_is_file': (clone / 'train.py', None), 'cwd': ('.', clone), 'parent_of_cwd': ('..', clone / 'sub'),
                    'cwd_absolute': (clone, clone)}[case]
    return ['shakespeare_char', '--input', src, '--out_dir', out_dir], cwd

@pytest.mark.parametrize('case, words', [
    ('empty_input', ['too small', 'train split has 0 token']),
    ('two_chars', ['too small', 'train split has 1 token']),
    ('binary_input', ['not UTF-8 text', 'offset 128']),
    ('unrelated_dir', ['not a dataset written by prepare_data.py', 'other_dataset']),
    ('dataset_plus_file', ['not a dataset written by prepare_data.py', 'notes.txt']),
    ('out_dir_is_file', ['not a directory']),
    ('cwd', ['working directory']),
    ('parent_of_cwd', ['working directory']),
    ('cwd_absolute', ['working directory']),
    ('symlink_slash', ['link_ds exists and is not a directory']),
])
def test_refuses_and_changes_nothing(tmp_path, case, words):
    args, cwd = _setup(tmp_path, case)
    before = snapshot(tmp_path)
    r = run(*args, cwd=cwd)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('prepare_data.py: error: '), r.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert snapshot(tmp_path) == before  # the dataset, the checkout, the other files: byte for byte, nothing added

def test_replaces_its_own_dataset_or_an_empty_dir(tmp_path):
    src, sc, empty = tmp_path / 'input.txt', tmp_path / 'data' / 'sc', tmp_path / 'data' / 'empty'
    src.write_text(TEXT, encoding='utf-8')
    assert run('shakespeare_char', '--input', src, '--out_dir', sc).returncode == 0
    empty.mkdir()
    src.write_text(TEXT.upper(), encoding='utf-8')
    for out in (sc, empty):
        r = run('shakespeare_char', '--input', src, '--out_dir', out)
        assert r.returncode == 0, r.stderr
        assert get_tokenizer(load_meta(out))[1](read_tokens(out, 'train')) == TEXT.upper()[:int(0.9 * len(TEXT))]
    assert sorted(os.listdir(tmp_path / 'data')) == ['empty', 'sc']  # no temporary or old copies left


SLOW_PREPARE = '''
import sys
import prepare_data
original = prepare_data.DATASETS['shakespeare_char']
def slow(out, args):  # holds out_dir until the test says go on
    print('started', flush=True)
    sys.stdin.readline()
    return original(out, args)
prepare_data.DATASETS['shakespeare_char'] = slow
prepare_data.main(sys.argv[1:])
'''


@pytest.mark.parametrize('case, words', [
    ('full disk', ['cannot write', 'nothing was replaced']),
    ('read-only out_dir', ['Read-only file system']),
    ('two at once', ['is in use by process']),
])
def test_write_faults_and_a_second_writer_are_one_line(tmp_path, small_fs, case, words):
    src, fs = tmp_path / 'input.txt', small_fs(64 << 10)
    src.write_text(TEXT * (40 if case == 'full disk' else 1), encoding='utf-8')  # 2 bytes a character: over 64 KiB
    out = fs / 'data' / 'sc'
    first = None
    if case == 'read-only out_dir':
        assert run('shakespeare_char', '--input', src, '--out_dir', out).returncode == 0
        subprocess.run(['mount', '-o', 'remount,ro', str(fs)], check=True)
    elif case == 'two at once':
        first = subprocess.Popen([sys.executable, '-c', SLOW_PREPARE, 'shakespeare_char', '--input', str(src), '--out_dir',
                                  str(out)], cwd=SCRIPT.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert first.stdout.readline() == 'started\n'
    before = snapshot(fs)
    r = run('shakespeare_char', '--input', src, '--out_dir', out)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith('prepare_data.py: error: '), r.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert snapshot(fs) == before
    if first is not None:  # the first one is unharmed, and leaves no lock behind
        first.stdin.write('go on\n')
        first.stdin.close()
        assert first.wait(timeout=60) == 0, first.stderr.read()
        assert get_tokenizer(load_meta(out))[1](read_tokens(out, 'train')) == TEXT[:int(0.9 * len(TEXT))]
        assert sorted(os.listdir(out.parent)) == ['sc']
