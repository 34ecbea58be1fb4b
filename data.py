"""
A dataset directory (written by prepare_data.py), and the text batches train.py draws from it.

    text:  train.bin, val.bin: flat uint16 token ids, as nanoGPT's
    image: {train,val}_x.npy (N, H, W, C) uint8, channels last; {train,val}_y.npy (N,) int64
    meta.json: {"kind": "text", "vocab_size", "tokenizer": "char" | "gpt2", "itos" (char only),
                "train_tokens", "val_tokens", "train_stamp", "val_stamp" (each file's bytes and mtime_ns)}
               {"kind": "image", "shape": [H, W, C], "num_classes", "class_names", "mean", "std"
                (per channel, of the train pixels / 255), "train_size", "val_size"}
A directory with train.bin and val.bin and no meta.json is nanoGPT's format (GPT-2 BPE tokens).

TextData (here) and ImageData (images.py) share one interface: get_batches(split, n_total, rows, gen) ->
[(x, y)], one per micro-step, and eval_batches(split, rank, world_size). One generator, seeded alike on every
process, draws an iteration's n_total micro-batches; each process keeps its rows, so N processes train like
one process accumulating N times.
"""
import os

import numpy as np
import torch

from configurator import DataError
from datachecks import check_token_files, read_meta
from devices import pin_memory

DATASET_FILES = {'text': {'meta.json', 'train.bin', 'val.bin'},  # by meta['kind']: all that a dataset directory holds
                 'image': {'meta.json', 'train_x.npy', 'train_y.npy', 'val_x.npy', 'val_y.npy'}}
GPT2_BPE = dict(kind='text', tokenizer='gpt2', vocab_size=50257)  # the meta of nanoGPT's token files


# ----------------------------------------------------------------------------------------
# readers


def load_meta(data_dir, log=print):
    has = lambda name: os.path.isfile(os.path.join(data_dir, name))
    if not has('meta.json') and has('train.bin') and has('val.bin'):
        log(f"{data_dir} has train.bin and val.bin but no meta.json: read as nanoGPT's format "
            "(uint16 GPT-2 BPE tokens)")
        return dict(GPT2_BPE)
    return read_meta(data_dir)


def load_images(data_dir, split, mmap=False):
    """x (N, H, W, C) uint8 and y (N,) int64 of a split; mmap: x stays on disk, read as it is indexed."""
    x = np.load(os.path.join(data_dir, f'{split}_x.npy'), mmap_mode='r' if mmap else None, allow_pickle=False)
    y = np.load(os.path.join(data_dir, f'{split}_y.npy'), allow_pickle=False)
    return x, y


def gpt2_encoding():
    try:
        import tiktoken
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # offline without a cache raises whatever the HTTP client raised
        raise DataError(f"tiktoken cannot load the gpt2 encoding ({type(e).__name__}); offline? set TIKTOKEN_CACHE_DIR "
                        "to a folder holding tiktoken's cache files") from None


def get_tokenizer(meta):
    """(encode, decode) of a text dataset's meta."""
    if meta.get('tokenizer') == 'gpt2':
        enc = gpt2_encoding()
        encode = lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})  # in a prompt, the EOT token, as in nanoGPT
        return encode, lambda ids: enc.decode([int(i) for i in ids])
    if meta.get('tokenizer') == 'char':
        itos = meta['itos']
        stoi = {c: i for i, c in enumerate(itos)}

        def encode(s):
            unknown = dict.fromkeys(c for c in s if c not in stoi)  # in order of appearance
            if unknown:
                raise ValueError("characters not in the vocabulary: " + ', '.join(map(repr, unknown)))
            return [stoi[c] for c in s]
        return encode, lambda ids: ''.join(itos[i] for i in ids)
    raise ValueError(f"no tokenizer in meta (kind={meta.get('kind')!r}, tokenizer={meta.get('tokenizer')!r})")

# ----------------------------------------------------------------------------------------
# text: random windows of block_size tokens, the next token as target


class TextData:
    unit = 'tok'
    eval_splits = ('train', 'val')

    def __init__(self, data_dir, meta, device, batch_size, block_size, eval_iters, eval_seed):
        check_token_files(data_dir, meta, block_size)
        self.data_dir, self.device, self.batch_size, self.block_size = data_dir, device, batch_size, block_size
        self.eval_iters, self.eval_seed = eval_iters, eval_seed
        self.samples_per_micro_step = batch_size * block_size

    def get_batches(self, split, n_total, rows, gen):
        # a fresh memmap per call: a long-lived one keeps every page it touched (nanoGPT does the same)
        data = np.memmap(os.path.join(self.data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
        T = self.block_size
        ix = torch.randint(len(data) - T, (n_total, self.batch_size), generator=gen)[rows]
        batches = []
        for row in ix:
            x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in row])  # (B, T)
            y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in row])  # x one token on
            if pin_memory(self.device):  # the copy then runs asynchronously
                x, y = x.pin_memory(), y.pin_memory()
            batches.append((x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)))
        return batches

    def eval_batches(self, split, rank, world_size):
        """eval_iters random batches, the same at every eval; this process's share of them."""
        gen = torch.Generator().manual_seed(self.eval_seed)
        return self.get_batches(split, self.eval_iters, slice(rank, None, world_size), gen)

# ----------------------------------------------------------------------------------------
# either kind: an eval's sums


@torch.no_grad()
def eval_sums(model, batches, ctx):
    """(sum of loss x samples, top-1 correct, samples) of model over batches, as one tensor; image labels of -1
    are padding."""
    total = 0
    for x, y in batches:
        with ctx:
            logits, loss = model(x, y)
        n = (y >= 0).sum().float() if y.dim() == 1 else torch.tensor(float(len(y)), device=y.device)
        total = total + torch.stack([loss.float() * n, (logits.argmax(-1) == y).sum().float(), n])
    return total
