"""
The checks of a dataset directory, without the model: its meta.json, token files and images (data.py's
readers call these; prepare_data.py checks what it writes with them), and the lock of a directory a process
writes (a dataset, a run's out_dir). Every refusal is a DataError or a ConfigError.
"""
import fcntl
import json
import os
import sys

import numpy as np

from configurator import ConfigError, DataError

# ----------------------------------------------------------------------------------------
# a dataset directory


def read_meta(data_dir):
    """data_dir's meta.json, checked; a missing one names the command that writes it."""
    path = os.path.join(data_dir, 'meta.json')
    if not os.path.isfile(path):
        name = os.path.basename(os.path.normpath(data_dir))
        raise DataError(f"no dataset in {data_dir} (meta.json missing); create it with: python prepare_data.py {name} "
                        f"--out_dir {data_dir} (python prepare_data.py --help lists the datasets)")
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not readable JSON ({type(e).__name__}: {e}); prepare the dataset again") from None
    check_meta(meta, path)
    return meta


def check_meta(meta, path, fix='prepare the dataset again'):
    """The fields train.py and sample.py read, of the right kinds; else DataError naming the file."""
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
    if not isinstance(meta, dict) or meta.get('kind') not in ('text', 'image'):
        problem = "its kind is not 'text' or 'image'"
    elif meta['kind'] == 'text' and not count(meta.get('vocab_size')):
        problem = "a text dataset needs a vocab_size of at least 1"
    elif meta['kind'] == 'text' and meta.get('tokenizer') == 'char' and len(meta.get('itos') or []) != meta['vocab_size']:
        problem = f"its itos has {len(meta.get('itos') or [])} characters, its vocab_size is {meta['vocab_size']}"
    elif meta['kind'] == 'image' and not (isinstance(meta.get('shape'), list) and len(meta['shape']) == 3
                                          and all(count(v) for v in meta['shape']) and count(meta.get('num_classes'))
                                          and all(len(meta.get(k) or []) == meta['shape'][2] for k in ('mean', 'std'))):
        problem = "an image dataset needs shape [H, W, C], num_classes, and C values of mean and std"
    else:
        return
    raise DataError(f"{path} does not describe a dataset: {problem}; {fix}")


def check_images(x, y, name, num_classes=None):
    """x as (N, H, W, C) and y as int64, if x holds N >= 1 uint8 images [N,H,W] or [N,H,W,C] and y N integer
    labels in 0..num_classes-1; else DataError naming `name`."""
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"{name}: images must be uint8 [N,H,W] or [N,H,W,C], got {x.dtype} {list(x.shape)}")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise DataError(f"{name}: labels must be {len(x)} integers, got {y.dtype} {list(y.shape)}")
    if len(x) == 0:
        raise DataError(f"{name}: no images")
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        allowed = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
        raise DataError(f"{name}: labels must be {allowed}, got {y.min()}..{y.max()}")
    return (x[..., None] if x.ndim == 3 else x), y.astype(np.int64)


def file_stamp(path):
    st = os.stat(path)
    return dict(bytes=st.st_size, mtime_ns=st.st_mtime_ns)


def max_token_id(path, stamp):
    """The largest id in a token file, read only where needed: not at all for a file as prepare_data.py wrote
    it (its stamp), in full for one changed since, and at both ends (2M ids each) for nanoGPT's, which a file
    of the wrong format or tokenizer shows there as anywhere."""
    if stamp == file_stamp(path):
        return None
    ids = np.memmap(path, dtype=np.uint16, mode='r')
    return int(ids.max() if stamp is not None else max(ids[:1 << 21].max(), ids[-(1 << 21):].max()))


def check_token_files(data_dir, meta, block_size):
    """Each split: whole uint16 ids, more than block_size of them, all inside the vocabulary."""
    for split in ('train', 'val'):
        path = os.path.join(data_dir, f'{split}.bin')
        n_bytes = os.path.getsize(path) if os.path.isfile(path) else 0
        if n_bytes % 2:
            raise DataError(f"{path} holds {n_bytes} bytes, an odd number: not uint16 token ids; prepare the dataset again")
        n_tokens = n_bytes // 2
        if n_tokens <= block_size:
            raise DataError(f"{path} holds {n_tokens} tokens; block_size {block_size} needs at least "
                            f"{block_size + 1}: lower --block_size or prepare more data")
        top = max_token_id(path, meta.get(f'{split}_stamp'))
        if top is not None and top >= meta['vocab_size']:
            raise DataError(f"{path} holds token id {top}, outside the vocabulary of its meta.json (vocab_size "
                            f"{meta['vocab_size']}); prepare the dataset again")


def check_image_options(data_dir, meta, image_size, crop, rrc_min_scale, mixup, cutmix, data_workers):
    H, W, C = meta['shape']
    if H != W:
        raise DataError(f"the ViT takes square images; {data_dir} holds {H}x{W}")
    if not 0 < (image_size or H) <= H:
        raise DataError(f"image_size ({image_size}) must be 0 (as stored) or at most the stored {H}x{W}")
    if crop not in ('pad', 'rrc'):
        raise DataError(f"unknown crop {crop!r}; choose 'pad' (CIFAR) or 'rrc' (random-resized-crop, ImageNet)")
    if not 0 < rrc_min_scale <= 1 or mixup < 0 or cutmix < 0 or data_workers < 1:
        raise DataError(f"need 0 < rrc_min_scale <= 1, mixup >= 0, cutmix >= 0, data_workers >= 1; got "
                        f"{rrc_min_scale}, {mixup}, {cutmix}, {data_workers}")


def check_image_split(data_dir, split, meta, load):
    """x, y = load(), checked against meta.json."""
    try:
        x, y = load()
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the {split} images of {data_dir} ({e}); prepare it again") from None
    x, y = check_images(x, y, f"the {split} split of {data_dir} (prepare it again)", meta['num_classes'])
    if list(x.shape[1:]) != meta['shape']:
        raise DataError(f"the {split} images of {data_dir} are {list(x.shape[1:])}, not the {meta['shape']} of "
                        "its meta.json; prepare the dataset again")
    return x, y

# ----------------------------------------------------------------------------------------
# the lock of a directory a process writes


_claimed = []  # the locks this process holds, open until it exits


def claim(lock_path, what):
    """An OS lock (flock) on lock_path, made if missing (and its folder), held until this process ends: no
    second process writes `what` meanwhile. The kernel drops it when the process dies: a killed run leaves no
    stale lock."""
    while True:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot write {lock_path} ({e.strerror}); free space or fix its permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'another process'
            os.close(fd)
            raise ConfigError(f"{what} is in use by {holder}; wait until it ends, or give another directory") from None
        if os.path.exists(lock_path) and os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # its last holder removed it meanwhile: lock the file now there
    try:  # who holds it, for the message above; a full disk leaves it unsaid
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({os.path.basename(sys.argv[0])})".encode(), 0)
    except OSError:
        pass
    _claimed.append(fd)
    return fd


def check_fits(cfg, meta, data_dir, kind):
    """The dataset in data_dir is one a model of config cfg can read (sample.py): its kind, for images its
    channels, classes and size; for text, a tokenizer within its vocabulary."""
    if meta['kind'] != kind:
        raise DataError(f"{data_dir} holds {meta['kind']} data, and the checkpoint a model of {kind}: give the "
                        "--data_dir it was trained on")
    if kind == 'text' and meta['vocab_size'] > cfg.vocab_size:
        raise DataError(f"the model knows {cfg.vocab_size} tokens, the tokenizer of {data_dir} {meta['vocab_size']}: "
                        "give the --data_dir it was trained on")
    if kind == 'image':
        H, W, C = meta['shape']
        if (C, meta['num_classes']) != (cfg.in_chans, cfg.num_classes) or H < cfg.image_size:
            raise DataError(f"{data_dir} holds {H}x{W} images of {C} channel(s) in {meta['num_classes']} classes, and the "
                            f"model reads {cfg.image_size}x{cfg.image_size} of {cfg.in_chans} in {cfg.num_classes}: give "
                            "the --data_dir it was trained on")
