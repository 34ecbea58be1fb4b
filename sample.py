"""
Sample from a trained DNT-GPT, or score a trained DNT-ViT on the validation images.
$ python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
$ python sample.py --out_dir=out-cifar10            # an image checkpoint: top-1 accuracy on val
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life, the universe, and everything?"
--start=FILE:prompt.txt reads the prompt from a file. A checkpoint carries its tokenizer: the
dataset directory is needed only for image checkpoints (and checkpoints older than that).
"""
import argparse
import os
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from configurator import ConfigError, check_device
from model import GPT, GPT2_MODELS, GPTConfig, ViT, ViTConfig, load_checkpoint
from data import GPT2_BPE, center_crop, get_tokenizer, load_images, load_meta


def boolean(s):
    """True or False, spelled as train.py's --key=value takes them."""
    if s not in ('True', 'False'):
        raise argparse.ArgumentTypeError(f"expected True or False, got {s!r}")
    return s == 'True'


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every error here (argparse would print the usage too)
        sys.exit(f"sample.py: error: {message}")


def parse_args(argv):
    cuda = torch.cuda.is_available()
    p = Parser(description="Sample text from a GPT checkpoint, or evaluate a ViT checkpoint on val.")
    p.add_argument('--init_from', default='resume', help="'resume': the checkpoint in --out_dir; or GPT-2's weights: "
                   + ', '.join(GPT2_MODELS) + " (pip install transformers), or a directory of a saved GPT2LMHeadModel")
    p.add_argument('--out_dir', default='out', help="directory holding ckpt.pt")
    p.add_argument('--start', default="\n", help="the prompt, or FILE:path to read it from a file")
    p.add_argument('--num_samples', type=int, default=10)
    p.add_argument('--max_new_tokens', type=int, default=500)
    p.add_argument('--temperature', type=float, default=0.8, help="< 1 less random, > 1 more random")
    p.add_argument('--top_k', type=int, default=200, help="keep only the top_k most likely tokens (0: all)")
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--device', default='cuda' if cuda else 'cpu')
    p.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'],
                   default='bfloat16' if cuda and torch.cuda.is_bf16_supported() else 'float32')
    p.add_argument('--compile', type=boolean, nargs='?', const=True, default=False, help="True: compile the model with torch.compile")
    p.add_argument('--data_dir', default='', help="dataset directory (default: the one the checkpoint was trained on)")
    p.add_argument('--batch_size', type=int, default=256, help="images per batch (image checkpoints)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    fail = lambda message: sys.exit(f"sample.py: error: {message}")
    for name, low in (('num_samples', 1), ('max_new_tokens', 1), ('top_k', 0), ('batch_size', 1)):
        if getattr(args, name) < low:
            fail(f"--{name} must be at least {low}, got {getattr(args, name)}")
    try:
        check_device(args.device)
    except ConfigError as e:
        fail(e)
    torch.manual_seed(args.seed)
    device_type = 'cuda' if args.device.startswith('cuda') else 'cpu'
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[args.dtype]
    ctx = nullcontext() if args.dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)

    if args.init_from == 'resume':
        ckpt_path = os.path.join(args.out_dir, 'ckpt.pt')
        try:
            checkpoint = load_checkpoint(ckpt_path)  # on the CPU: only the model goes to the device
        except ValueError as e:
            fail(f"{e}; train a model first (python train.py ...) or check --out_dir")
        is_text = checkpoint['model_type'] == 'text'
        ModelConfig, Model = (GPTConfig, GPT) if is_text else (ViTConfig, ViT)
        try:
            model = Model(ModelConfig(**checkpoint['model_args']))
            model.load_state_dict(checkpoint['model'])
        except (TypeError, ValueError, RuntimeError) as e:
            fail(f"{ckpt_path}: its weights do not fit its model_args ({type(e).__name__}: {str(e).splitlines()[0]})")
        config, meta = checkpoint['config'], checkpoint.get('meta')  # meta: the dataset's, in checkpoints since it was added
        del checkpoint  # the optimizer state
    else:  # GPT-2's weights, as nanoGPT's sample.py --init_from=gpt2
        try:
            model = GPT.from_pretrained(args.init_from)
        except (ValueError, ImportError, OSError) as e:
            fail(e)
        is_text, config, meta = True, {}, dict(GPT2_BPE)
    model.eval().to(args.device)
    if args.data_dir or meta is None or not is_text:  # images: the val split is read from the dataset
        data_dir = args.data_dir or config.get('data_dir') or os.path.join('data', config['dataset'])
        try:
            meta = load_meta(data_dir, log=lambda line: print(line, file=sys.stderr))  # stdout holds the samples
        except FileNotFoundError as e:
            fail(f"{e} (or point --data_dir at a copy of the dataset)")
    if args.compile:
        model.compile()  # in place: generate() calls the module, so it runs compiled too

    if not is_text:
        x_val, y_val = load_images(data_dir, 'val', mmap=True)  # read batch by batch: val may be large (ImageNet)
        mean = torch.tensor(meta['mean'], device=args.device).view(1, -1, 1, 1)
        std = torch.tensor(meta['std'], device=args.device).view(1, -1, 1, 1)
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(x_val), args.batch_size):
                x = torch.tensor(x_val[i:i + args.batch_size], device=args.device).permute(0, 3, 1, 2)  # (B, C, H, W); a copy of the read-only memmap
                x = center_crop(x, model.config.image_size)  # as train.py evaluates: the center at the trained size
                y = torch.from_numpy(y_val[i:i + args.batch_size]).to(args.device)
                with ctx:
                    logits, _ = model((x.float() / 255 - mean) / std)
                loss_sum += F.cross_entropy(logits.float(), y, reduction='sum').item()
                correct += (logits.argmax(-1) == y).sum().item()
        n = len(y_val)
        print(f"top-1 accuracy on val: {100 * correct / n:.2f}% ({n} images), loss {loss_sum / n:.4f}")
        return

    encode, decode = get_tokenizer(meta)
    start = args.start
    if start.startswith('FILE:'):
        try:
            with open(start[5:], encoding='utf-8') as f:
                start = f.read()
        except OSError as e:
            fail(f"cannot read the prompt file {start[5:]}: {e.strerror}")
    try:
        start_ids = encode(start)
    except ValueError as e:
        fail(f"the prompt has {e}")
    if not start_ids:
        fail("the prompt is empty; give at least one token with --start")
    if args.temperature <= 0:
        fail(f"--temperature must be > 0, got {args.temperature} (use --top_k=1 for greedy decoding)")
    if model.config.vocab_size > meta['vocab_size']:  # a padded vocabulary: never sample the padding ids
        pad = torch.arange(meta['vocab_size'], model.config.vocab_size, device=args.device)
        model.lm_head.register_forward_hook(lambda module, inputs, logits: logits.index_fill(-1, pad, float('-inf')))
    x = torch.tensor(start_ids, dtype=torch.long, device=args.device)[None, ...]
    with torch.no_grad(), ctx:
        for _ in range(args.num_samples):
            y = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None)
            print(decode(y[0].tolist()))
            print('---------------')


if __name__ == '__main__':
    main()
