"""
Prepare a dataset for train.py: `python prepare_data.py NAME [--out_dir DIR] [--input PATH]`
writes data/NAME/ (or DIR). NAME is one of shakespeare_char, shakespeare, openwebtext,
cifar10, fashion_mnist, npz, imagefolder, imagenet.

The on-disk format is in data.py's docstring.

A dataset directory is built in a hidden sibling (data/.NAME.tmp-xxxx) and renamed into
place only when complete, so train.py never sees a partial one.

Downloads go to --cache_dir (default: `downloads` next to the dataset dir, i.e. data/downloads/),
via a temporary file renamed only after the checksum matched; a file already in the cache
is used as is (it was verified when it arrived). `--input` takes a local copy instead:
the text file (shakespeare*), the tar.gz (cifar10), a directory with the 4 .gz files
(fashion_mnist), a directory with OpenWebText's parquet files (openwebtext, searched
recursively) or the .npz (npz). Local copies are not checksummed, only parsed strictly
(repackaged copies, e.g. Debian's re-gzipped Fashion-MNIST, differ in md5 but not in content).
openwebtext needs Hugging Face datasets and reads the published parquet files (OPENWEBTEXT_FILES),
not the dataset's loading script, which datasets >= 4 refuses; its cache is --cache_dir too.
npz import: x_train, y_train, x_test, y_test (uint8 [N,H,W] or [N,H,W,C]; integer labels),
optional class_names; its default out_dir is data/<file name without .npz>.

imagefolder: --input DIR holding train/<class>/<image> and val/<class>/<image> (any format
Pillow reads; class = folder name, labels in sorted order of train's folders). Each image is
decoded once by --num_proc processes, its shorter side resized to --image_size (bicubic;
JPEGs decoded at a reduced scale first) and center-cropped, stored as RGB. imagenet: the same
for ILSVRC-2012 (1000 wnid folders; val sorted into them, see README), default out_dir
data/imagenet. These two build in data/.NAME.partial, which a stopped run (Ctrl-C, a bad file)
keeps: rerunning the same command continues from its last save (every IMAGE_CHUNK images).
Pillow is needed for these two only.
"""
import argparse
import glob
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager

import numpy as np

from configurator import ConfigError, DataError
from data import DATASET_FILES, get_tokenizer, gpt2_encoding
from datachecks import check_images, claim, file_stamp

# file in the download cache -> (url, md5)
DOWNLOADS = {
    'tinyshakespeare.txt': ('https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
                            '6fb458f1232090904fb40fe944165e91'),
    'cifar-10-python.tar.gz': ('https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
                               'c58f30108f718f92721af3b95e74349a'),
}
FMNIST_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),  # split -> (images, labels)
                'val': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
DOWNLOADS.update({f: ('http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/' + f, md5) for f, md5 in [
    ('train-images-idx3-ubyte.gz', '8d4fb7e6c68d591d4c3dfef9ec88bf0d'),
    ('train-labels-idx1-ubyte.gz', '25c81989df183df01b3e8a0aad5dffbe'),
    ('t10k-images-idx3-ubyte.gz', 'bef4ecab320f06d8554ea6380940ec79'),
    ('t10k-labels-idx1-ubyte.gz', 'bb300cfdad3c16e7a12a480ee83fd310')]})
# OpenWebText as parquet files: the dataset owner's full conversion (hub PR #18, "convert-parquet-full"),
# pinned to its commit; the hub's own refs/convert/parquet branch keeps just the first ~5 GB of a dataset this large.
OPENWEBTEXT_REVISION = '963532436460638ab26b7633e23776e6c7e37d59'
OPENWEBTEXT_FILES = f'hf://datasets/Skylion007/openwebtext@{OPENWEBTEXT_REVISION}/data/train-*.parquet'
OPENWEBTEXT_HELP = (f"hf download Skylion007/openwebtext --repo-type dataset --revision {OPENWEBTEXT_REVISION} "
                    "--include 'data/*' --local-dir DIR")
FMNIST_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']

def _default_mode(path, mode):
    """mkdtemp/mkstemp create private (0700/0600) paths; give them the usual permissions before publishing."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)

# ----------------------------------------------------------------------------------------
# downloads and atomic writes

class _Progress:
    """Plain stderr progress for when tqdm is not installed: MB for unit 'B', else a count."""
    def __init__(self, total, desc, unit, initial):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
    def update(self, n):
        self.n += n
        fmt = (lambda v: f"{v / 1e6:.1f}") if self.unit == 'B' else (lambda v: f"{v:,}")
        of = f" / {fmt(self.total)}" if self.total else ""
        print(f"\r{self.desc}: {fmt(self.n)}{of} {'MB' if self.unit == 'B' else self.unit}", end='', file=sys.stderr, flush=True)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        print(file=sys.stderr)

def _progress(total, desc, unit='B', initial=0):
    try:
        from tqdm import tqdm
        return tqdm(total=total or None, unit=unit, unit_scale=unit == 'B', desc=desc, initial=initial)
    except ImportError:
        return _Progress(total, desc, unit, initial)

def fetch(fname, args):
    """Path of a download-cache file, downloading it first if it is not there yet."""
    url, md5 = DOWNLOADS[fname]
    path = os.path.join(args.cache_dir, fname)
    if os.path.exists(path):
        print(f"using cached {path}")
        return path
    try:
        import requests
    except ImportError:
        raise DataError(f"downloading {fname} needs requests: pip install requests (or use --input)") from None
    made_cache_dir = not os.path.exists(args.cache_dir)
    os.makedirs(args.cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{fname}.part-', dir=args.cache_dir)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, 'wb') as f, requests.get(url, stream=True, timeout=30) as r:
            r.raise_for_status()
            with _progress(int(r.headers.get('content-length', 0)), f"downloading {fname}") as bar:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if h.hexdigest() != md5:
            raise DataError(f"checksum mismatch for {url}: md5 {h.hexdigest()}, expected {md5}")
        _default_mode(tmp, 0o666)
        os.replace(tmp, path)
    except requests.RequestException as e:
        http = isinstance(e, requests.HTTPError) and e.response is not None
        reason = f"HTTP {e.response.status_code}" if http else type(e).__name__
        raise DataError(f"download of {url} failed ({reason}); offline? use --input with a local copy") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        if made_cache_dir and not os.listdir(args.cache_dir):  # a failed first download leaves no empty folder
            os.rmdir(args.cache_dir)
    return path

def local_or_fetch(fname, args):
    if args.input is None:
        return fetch(fname, args)
    path = os.path.join(args.input, fname) if os.path.isdir(args.input) else args.input
    if not os.path.isfile(path):
        raise DataError(f"--input: {path} not found")
    return path

def check_replaceable(out_dir):
    """Refuse an out_dir whose replacement would delete what this script did not write."""
    real = os.path.realpath(out_dir)
    if os.path.commonpath([real, os.path.realpath(os.getcwd())]) == real:
        raise DataError(f"--out_dir {out_dir} is the working directory or one of its parents; give a new directory, e.g. data/NAME")
    if not os.path.lexists(out_dir):
        return
    if os.path.islink(out_dir):
        raise DataError(f"--out_dir {out_dir} exists and is not a directory but a symbolic link (to "
                        f"{os.readlink(out_dir)}), which is left alone; give the directory itself or a new one")
    if not os.path.isdir(out_dir):
        raise DataError(f"--out_dir {out_dir} exists and is not a directory; give a new directory, e.g. data/NAME")
    entries = set(os.listdir(out_dir))
    try:
        with open(os.path.join(out_dir, 'meta.json'), encoding='utf-8') as f:
            kind = json.load(f).get('kind')
    except (OSError, ValueError, AttributeError):  # missing, not JSON, not an object
        kind = None
    foreign = sorted(entries - DATASET_FILES.get(kind, set()))
    if foreign:  # an empty directory or a dataset of ours is replaced; anything else is left alone
        raise DataError(f"--out_dir {out_dir} holds files that are not a dataset written by prepare_data.py "
                        f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); nothing was changed: "
                        "give a new directory, or move those files away")

@contextmanager
def atomic_dir(out_dir, resumable=False):
    """Yield a temporary sibling of out_dir that replaces out_dir only if the block succeeds.
    An existing out_dir is replaced only if it is empty or a dataset in this script's format.
    resumable: the sibling is .NAME.partial, kept when the block fails, so that a rerun can continue
    what it holds (the block checks that it is its own); removed on failure only if still empty.
    One prepare_data.py at a time writes out_dir: it holds .NAME.lock beside it meanwhile."""
    check_replaceable(out_dir)
    parent, name = os.path.split(os.path.abspath(out_dir))
    made = [d for d in _ancestors(parent) if not os.path.exists(d)]  # deepest first; removed again if left empty
    lock = os.path.join(parent, f'.{name}.lock')
    lock_fd = claim(lock, out_dir)
    try:
        with _replacing(os.path.abspath(out_dir), resumable) as tmp:
            yield tmp
    finally:
        os.remove(lock)  # while still held: a process waiting on this file then locks a new one
        os.close(lock_fd)
        for d in made:
            if not os.listdir(d):
                os.rmdir(d)


def _ancestors(path):
    """path, its parent, and so on up to the root."""
    while path != os.path.dirname(path):
        yield path
        path = os.path.dirname(path)


@contextmanager
def _replacing(out_dir, resumable):
    parent, name = os.path.split(out_dir)
    if resumable:
        tmp = os.path.join(parent, f'.{name}.partial')
        if os.path.islink(tmp) or os.path.lexists(tmp) and not os.path.isdir(tmp):
            raise DataError(f"{tmp} exists and is not a directory; move it away")
        created = not os.path.exists(tmp)
        os.makedirs(tmp, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix=f'.{name}.tmp-', dir=parent)
    try:
        yield tmp
        _default_mode(tmp, 0o777)
        if os.path.exists(out_dir):  # an older version: move it aside first, os.replace can't overwrite a full dir
            old = tempfile.mkdtemp(prefix=f'.{name}.old-', dir=parent)
            os.replace(out_dir, os.path.join(old, name))
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        if not resumable:
            shutil.rmtree(tmp, ignore_errors=True)
        elif created and not os.listdir(tmp):
            os.rmdir(tmp)
        raise

# ----------------------------------------------------------------------------------------
# writers

def write_text(out, train_ids, val_ids, **meta):
    if meta['vocab_size'] > 65536:
        raise DataError(f"vocab_size {meta['vocab_size']} does not fit the uint16 token files")
    for split, ids in (('train', train_ids), ('val', val_ids)):
        if len(ids) < 2:
            raise DataError(f"the input is too small: its {split} split has {len(ids)} token(s), and the smallest "
                            "block needs 2 (train.py needs block_size + 1 in each split); give a longer --input")
        np.asarray(ids, dtype=np.uint16).tofile(os.path.join(out, f'{split}.bin'))
    return dict(kind='text', **meta, train_tokens=len(train_ids), val_tokens=len(val_ids), **token_stamps(out))

def token_stamps(out):
    """The size and mtime of each token file, whose ids the tokenizer kept below vocab_size: train.py then
    checks the ids again only if a file has changed since."""
    return {f'{split}_stamp': file_stamp(os.path.join(out, f'{split}.bin')) for split in ('train', 'val')}

def write_images(out, train, val, class_names):
    (xt, yt), (xv, yv) = train, val
    if xt.shape[1:] != xv.shape[1:]:
        raise DataError(f"train and test images differ in shape: {list(xt.shape[1:])} vs {list(xv.shape[1:])}")
    for split, x, y in (('train', xt, yt), ('val', xv, yv)):
        np.save(os.path.join(out, f'{split}_x.npy'), np.ascontiguousarray(x))
        np.save(os.path.join(out, f'{split}_y.npy'), y)
    return image_meta(xt.shape[1:], class_names, channel_histogram(xt), len(xt), len(xv))

def channel_histogram(x):
    """(C, 256) counts of each pixel value per channel of uint8 images (..., C): exact channel statistics
    in integers, in any order of chunks (so a resumed preparation gets the same as a straight one)."""
    return np.stack([np.bincount(x[..., c].ravel(), minlength=256) for c in range(x.shape[-1])])

def image_meta(shape, class_names, hist, train_size, val_size):
    """meta.json of an image dataset; mean and std per channel from the train split's channel_histogram."""
    v = np.arange(256, dtype=np.float64)
    n = hist.sum(1)
    mean = hist @ v / n
    std = np.sqrt(np.maximum(hist @ (v * v) / n - mean ** 2, 0))
    return dict(kind='image', shape=list(shape), num_classes=len(class_names), class_names=list(class_names),
                mean=(mean / 255).tolist(), std=(std / 255).tolist(), train_size=train_size, val_size=val_size)

# ----------------------------------------------------------------------------------------
# datasets

def _shakespeare_text(args):
    path = local_or_fetch('tinyshakespeare.txt', args)
    try:
        with open(path, encoding='utf-8', newline='') as f:
            text = f.read()  # newline='': keep the text exactly as in the file
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); give a text file") from None
    n = int(0.9 * len(text))
    return text[:n], text[n:]

def prepare_shakespeare_char(out, args):
    train, val = _shakespeare_text(args)
    itos = sorted(set(train + val))
    encode, _ = get_tokenizer({'tokenizer': 'char', 'itos': itos})
    return write_text(out, encode(train), encode(val), vocab_size=len(itos), tokenizer='char', itos=itos)

def prepare_shakespeare(out, args):
    train, val = _shakespeare_text(args)
    enc = gpt2_encoding()
    return write_text(out, enc.encode_ordinary(train), enc.encode_ordinary(val), vocab_size=enc.n_vocab, tokenizer='gpt2')

def prepare_openwebtext(out, args):
    try:
        from datasets import load_dataset
        from tqdm import tqdm
    except ImportError as e:
        raise DataError(f"openwebtext needs Hugging Face datasets ({e.name} is missing): pip install datasets") from None
    if args.input is None:
        files, source = OPENWEBTEXT_FILES, 'the Hugging Face hub'
    else:
        files = sorted(glob.glob(os.path.join(glob.escape(args.input), '**', '*.parquet'), recursive=True))
        source = args.input
        if not files:
            raise DataError(f"--input: no .parquet files under {args.input}; openwebtext takes a folder holding the "
                            f"dataset's data/train-*.parquet files ({OPENWEBTEXT_HELP})")
    enc = gpt2_encoding()
    try:  # the parquet builder reads the files directly: no loading script (datasets >= 4 refuses those)
        ds = load_dataset('parquet', data_files={'train': files}, cache_dir=args.cache_dir, num_proc=args.num_proc)
    except Exception as e:  # network and hub errors come in many classes
        raise DataError(f"loading openwebtext from {source} failed ({type(e).__name__}: {str(e)[:200]}); "
                        f"offline? use --input ({OPENWEBTEXT_HELP})") from None
    if 'text' not in ds['train'].column_names:
        raise DataError(f"the openwebtext files from {source} have no 'text' column (columns: {ds['train'].column_names})")
    split = ds['train'].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split['val'] = split.pop('test')
    def tokenize(doc):
        ids = enc.encode_ordinary(doc['text']) + [enc.eot_token]  # EOT separates documents
        return {'ids': ids, 'len': len(ids)}
    split = split.map(tokenize, remove_columns=ds['train'].column_names, desc='tokenizing', num_proc=args.num_proc)
    sizes = {}
    for name, dset in split.items():
        sizes[name] = n = int(sum(dset['len']))
        arr = np.memmap(os.path.join(out, f'{name}.bin'), dtype=np.uint16, mode='w+', shape=(n,))
        shards, i = min(1024, len(dset)), 0
        for k in tqdm(range(shards), desc=f'writing {name}.bin'):  # shards keep the memory use bounded
            ids = np.concatenate(dset.shard(num_shards=shards, index=k, contiguous=True).with_format('numpy')['ids'])
            arr[i:i + len(ids)] = ids
            i += len(ids)
        arr.flush()
        del arr
    return dict(kind='text', vocab_size=enc.n_vocab, tokenizer='gpt2', train_tokens=sizes['train'], val_tokens=sizes['val'],
                **token_stamps(out))

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR-10 batches are pickles; allow only what rebuilds a numpy array, so a file can't run code."""
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
               ('numpy', 'ndarray'), ('numpy', 'dtype')}
    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)

def safe_unpickle(data):
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding='bytes').load()  # bytes: the files come from Python 2

def prepare_cifar10(out, args):
    path = local_or_fetch('cifar-10-python.tar.gz', args)
    try:
        with tarfile.open(path, 'r:gz') as tar:  # read members in memory, never extract to disk
            load = lambda name: safe_unpickle(tar.extractfile(f'cifar-10-batches-py/{name}').read())
            def batches(names, split):
                ds = [load(n) for n in names]
                x = np.concatenate([np.asarray(d[b'data'], dtype=np.uint8) for d in ds])
                x = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are CHW, we store HWC
                return check_images(x, np.concatenate([np.asarray(d[b'labels'], dtype=np.int64) for d in ds]), f'{split} split', 10)
            train = batches([f'data_batch_{i}' for i in range(1, 6)], 'train')
            val = batches(['test_batch'], 'test')
            names = [n.decode() for n in load('batches.meta')[b'label_names']]
    except (tarfile.TarError, KeyError, ValueError, EOFError, OSError, pickle.UnpicklingError, TypeError) as e:
        raise DataError(f"{path} is not a valid CIFAR-10 python archive ({type(e).__name__}: {e})") from None
    return write_images(out, train, val, names)

def read_idx(path):
    """An IDX file (gzipped): magic 0x0000 0x08 (ubyte) ndim, then ndim big-endian int32 dims, then the data."""
    try:
        with gzip.open(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a gzip file ({e})") from None
    if len(data) < 4 or data[:3] != b'\x00\x00\x08':
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, dtype='>i4', count=ndim, offset=4).tolist() if len(data) >= 4 + 4 * ndim else None
    if dims is None or len(data) != 4 + 4 * ndim + int(np.prod(dims)):
        raise DataError(f"{path}: truncated or malformed IDX file")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)

def prepare_fashion_mnist(out, args):
    splits = [check_images(*(read_idx(local_or_fetch(f, args)) for f in FMNIST_FILES[split]), f'{split} split', 10)
              for split in ('train', 'val')]
    return write_images(out, *splits, FMNIST_CLASSES)

def prepare_npz(out, args):
    if args.input is None:
        raise DataError("npz needs --input FILE.npz")
    keys = ('x_train', 'y_train', 'x_test', 'y_test')
    try:
        with np.load(args.input, allow_pickle=False) as d:
            missing = [k for k in keys if k not in d.files]
            if missing:
                raise DataError(f"{args.input} lacks {', '.join(missing)} (needs {', '.join(keys)})")
            a = {k: d[k] for k in keys + ('class_names',) if k in d.files}
    except (OSError, ValueError, TypeError, zipfile.BadZipFile) as e:  # TypeError: a .npy, not an .npz
        raise DataError(f"cannot read {args.input} as an .npz ({type(e).__name__}: {e})") from None
    names = a.get('class_names')
    if names is not None and (names.ndim != 1 or names.dtype.kind not in 'US'):
        raise DataError(f"class_names must be a 1-D string array, got {names.dtype} {list(names.shape)}")
    num_classes = len(names) if names is not None else None
    train = check_images(a['x_train'], a['y_train'], 'x_train, y_train', num_classes)
    val = check_images(a['x_test'], a['y_test'], 'x_test, y_test', num_classes)
    if names is None:  # unnamed classes: 0..max label
        names = [str(i) for i in range(int(max(train[1].max(), val[1].max())) + 1)]
    return write_images(out, train, val, [str(n) for n in names])

# ----------------------------------------------------------------------------------------
# folders of images: the ImageFolder layout, ILSVRC-2012

IMAGE_CHUNK = 1024  # images decoded between two saves of the progress: the most a stopped run redoes

def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("decoding images needs Pillow: pip install Pillow") from None
    return Image

def list_image_folder(root, split, classes=None):
    """Sorted paths and labels of root/split/<class>/<image>; classes: the train split's, which val must use."""
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise DataError(f"{split_dir} not found; --input must hold train/<class>/<image> and val/<class>/<image>")
    entries = list(os.scandir(split_dir))
    found = sorted(e.name for e in entries if e.is_dir())
    if not found:
        loose = " but holds files directly: sort them into <class>/ folders (see README)" if entries else ""
        raise DataError(f"{split_dir} has no class folders{loose}")
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{split_dir} has class folders that train/ lacks: {', '.join(unknown[:5])}")
    extensions = {ext.lower() for ext in _pillow().registered_extensions()}
    paths, labels, skipped = [], [], 0
    for label, name in enumerate(classes):
        class_dir = os.path.join(split_dir, name)
        files = sorted(os.listdir(class_dir)) if os.path.isdir(class_dir) else []
        nested = [f for f in files if os.path.isdir(os.path.join(class_dir, f))]
        if nested:  # read or refused, never dropped: here refused
            raise DataError(f"{class_dir} holds folders ({', '.join(nested[:3])}); its images must sit in it directly")
        images = [f for f in files if os.path.splitext(f)[1].lower() in extensions]
        if split == 'train' and not images:
            raise DataError(f"{class_dir} holds no images")
        skipped += len(files) - len(images)
        paths += [os.path.join(class_dir, f) for f in images]
        labels += [label] * len(images)
    if not paths:
        raise DataError(f"{split_dir} holds no images")
    if skipped:
        print(f"{split_dir}: skipped {skipped} files that are not images by their extension")
    return paths, np.array(labels, dtype=np.int64), classes

def decode_image(path, size):
    """An image file as (size, size, 3) uint8 RGB: its shorter side resized to size (bicubic), center-cropped."""
    Image = _pillow()
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path} is empty")
        with Image.open(path) as img:
            img.draft('RGB', (size, size))  # JPEG: decode at the smallest 1/2^k scale still >= size (much faster)
            img = img.convert('RGB')  # grayscale, CMYK, palette, alpha -> RGB
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # a corrupt or truncated file
        raise DataError(f"{path} cannot be decoded ({type(e).__name__}: {e})") from None
    x = np.asarray(img)
    top, left = (x.shape[0] - size) // 2, (x.shape[1] - size) // 2
    return x[top:top + size, left:left + size]

def _decode(job):
    return decode_image(*job)

def prepare_imagefolder(out, args):
    """Decode --input's train/ and val/ images with num_proc processes into out, a .NAME.partial
    directory that keeps what is done (plan.json: what is being prepared; progress.json: how far)."""
    if args.input is None or not os.path.isdir(args.input):
        raise DataError(f"{args.name} needs --input DIR holding train/<class>/<image> and val/<class>/<image>")
    if args.image_size < 1 or args.num_proc < 1:
        raise DataError(f"--image_size and --num_proc must be at least 1, got {args.image_size} and {args.num_proc}")
    train_paths, train_y, classes = list_image_folder(args.input, 'train')
    val_paths, val_y, _ = list_image_folder(args.input, 'val', classes)
    if args.name == 'imagenet' and (len(classes) != 1000 or not all(len(c) == 9 and c[0] == 'n' and c[1:].isdigit() for c in classes)):
        raise DataError(f"{args.input}/train has {len(classes)} class folders, not the 1000 wnids (n01440764, ...) of "
                        "ILSVRC-2012; use the imagefolder dataset for other folders")
    splits = {'train': (train_paths, train_y), 'val': (val_paths, val_y)}
    names = '\n'.join(os.path.relpath(p, args.input) for p in train_paths + ['|'] + val_paths)
    files = hashlib.sha256(os.fsencode(names)).hexdigest()  # fsencode: a file name need not be UTF-8
    plan = dict(image_size=args.image_size, classes=classes, files=files)
    plan_path, progress_path = os.path.join(out, 'plan.json'), os.path.join(out, 'progress.json')
    if os.listdir(out):  # a stopped run's directory (plan.json is written first): continue it if it prepares the same
        try:
            with open(plan_path) as f:
                same = json.load(f) == plan
        except (OSError, ValueError):
            raise DataError(f"{out} exists and is not a stopped preparation of this script; move it away") from None
        if not same:
            raise DataError(f"{out} holds a stopped preparation of other files or another --image_size; "
                            "rerun with those, or remove it to start over")
    else:
        with open(plan_path, 'w') as f:
            json.dump(plan, f)

    def save_progress(progress):
        with open(progress_path + '.tmp', 'w') as f:
            json.dump(progress, f)
        os.replace(progress_path + '.tmp', progress_path)  # a stop mid-write keeps the previous progress

    if os.path.exists(progress_path):
        with open(progress_path) as f:
            progress = json.load(f)
        print(f"resuming {out}: {progress['train']:,} train and {progress['val']:,} val images already done")
    else:  # the arrays, then the progress file that says they are there
        for split, (paths, y) in splits.items():
            np.lib.format.open_memmap(os.path.join(out, f'{split}_x.npy'), mode='w+', dtype=np.uint8,
                                      shape=(len(paths), args.image_size, args.image_size, 3))
            np.save(os.path.join(out, f'{split}_y.npy'), y)
        progress = dict(train=0, val=0, hist=np.zeros((3, 256), dtype=np.int64).tolist())
        save_progress(progress)
    hist = np.array(progress['hist'], dtype=np.int64)
    for split, (paths, _) in splits.items():
        x = np.lib.format.open_memmap(os.path.join(out, f'{split}_x.npy'), mode='r+')
        start = done = progress[split]
        jobs = [(p, args.image_size) for p in paths[start:]]
        # Ctrl-C reaches the workers too: they ignore it, the main process reports it in one line and stops them
        ignore_sigint = (signal.signal, (signal.SIGINT, signal.SIG_IGN))
        with multiprocessing.Pool(args.num_proc, *ignore_sigint) as pool, \
                _progress(len(paths), f"decoding {split}", 'img', start) as bar:
            try:
                for i, img in enumerate(pool.imap(_decode, jobs, chunksize=16), start):
                    x[i] = img
                    bar.update(1)
                    if i + 1 - done == IMAGE_CHUNK or i + 1 == len(paths):
                        if split == 'train':
                            hist += channel_histogram(x[done:i + 1])
                        x.flush()
                        done = i + 1
                        progress.update({split: done, 'hist': hist.tolist()})
                        save_progress(progress)
            except DataError as e:
                raise DataError(f"{e}; the {done:,} {split} images before it are kept in {out}: replace the file "
                                "and rerun the same command to continue") from None
        del x
    os.remove(plan_path)
    os.remove(progress_path)
    return image_meta((args.image_size, args.image_size, 3), classes, hist, len(train_paths), len(val_paths))

DATASETS = {'shakespeare_char': prepare_shakespeare_char, 'shakespeare': prepare_shakespeare, 'openwebtext': prepare_openwebtext,
            'cifar10': prepare_cifar10, 'fashion_mnist': prepare_fashion_mnist, 'npz': prepare_npz,
            'imagefolder': prepare_imagefolder, 'imagenet': prepare_imagefolder}

# ----------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description="Write data/NAME/ for train.py (format: see this file's docstring).")
    p.add_argument('name', help=' | '.join(DATASETS))
    p.add_argument('--out_dir', help="default: data/NAME (npz, imagefolder: data/<input name>)")
    p.add_argument('--input', help="local copy to use instead of downloading")
    p.add_argument('--cache_dir', help="download cache, default: downloads/ next to out_dir")
    p.add_argument('--num_proc', type=int, default=8, help="worker processes (openwebtext, imagefolder, imagenet)")
    p.add_argument('--image_size', type=int, default=256,
                   help="imagefolder, imagenet: images are stored at this size (shorter side resized, center crop)")
    args = p.parse_args(argv)
    if args.out_dir:  # 'link/' would be the directory a symlink points to: judge the link itself
        args.out_dir = os.path.normpath(args.out_dir)
    try:
        if args.name not in DATASETS:
            raise DataError(f"unknown dataset {args.name!r}; choose one of: {', '.join(DATASETS)}")
        if args.input is not None and not os.path.exists(args.input):
            raise DataError(f"--input: {args.input} not found")
        stem = os.path.splitext(os.path.basename(os.path.normpath(args.input or '')))[0]
        out_dir = args.out_dir or os.path.join('data', stem if args.name in ('npz', 'imagefolder') and stem else args.name)
        args.cache_dir = args.cache_dir or os.path.join(os.path.dirname(os.path.abspath(out_dir)), 'downloads')
        with atomic_dir(out_dir, resumable=DATASETS[args.name] is prepare_imagefolder) as tmp:
            meta = DATASETS[args.name](tmp, args)
            with open(os.path.join(tmp, 'meta.json'), 'w', encoding='utf-8') as f:
                json.dump(meta, f, indent=1)
    except (DataError, ConfigError) as e:
        sys.exit(f"prepare_data.py: error: {' '.join(str(e).split())}")  # always one line
    except OSError as e:  # a full or read-only disk
        reason = e.strerror or f"{e}: is the disk full?"  # numpy's tofile says only how much it wrote
        sys.exit(f"prepare_data.py: error: cannot write {e.filename or out_dir} ({reason}); nothing was replaced: "
                 "free space, or give another --out_dir")
    except KeyboardInterrupt:
        sys.exit("prepare_data.py: interrupted; nothing half-written is kept but what a rerun continues from")
    if meta['kind'] == 'text':
        print(f"{args.name}: {meta['tokenizer']} tokenizer, vocab_size {meta['vocab_size']:,}, "
              f"train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens -> {out_dir}")
    else:
        fmt = lambda v: '[' + ', '.join(f'{x:.4f}' for x in v) + ']'
        print(f"{args.name}: {meta['train_size']:,} train / {meta['val_size']:,} val images of "
              f"{'x'.join(map(str, meta['shape']))}, {meta['num_classes']} classes, "
              f"mean {fmt(meta['mean'])}, std {fmt(meta['std'])} -> {out_dir}")

if __name__ == '__main__':
    main()
