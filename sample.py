"""
Sample from a trained DNT-GPT, or score a trained DNT-ViT on the validation (or training) images.
$ python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
$ python sample.py --out_dir=out-cifar10            # an image checkpoint: top-1 accuracy on val
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life, the universe, and everything?"
--start=FILE:prompt.txt reads the prompt from a file. A checkpoint carries its tokenizer: the
dataset directory is needed only for image checkpoints.
"""
import os
import sys

import torch

import checkpoint
from checks import check_sample_args, prompt_ids
from configurator import ConfigError, DataError, OneLineParser, boolean
from data import GPT2_BPE, eval_sums, get_tokenizer, load_meta
from datachecks import check_fits, check_meta
from devices import autocast, default_device
from images import ImageData
from model import GPT, GPT2_MODELS, GPTConfig, ViT, ViTConfig


def parse_args(argv):
    p = OneLineParser(prog='sample.py',
                      description="Sample text from a GPT checkpoint, or evaluate a ViT checkpoint on val.")
    p.add_argument('--init_from', default='resume', help="'resume': the checkpoint in --out_dir; or GPT-2's weights: "
                   + ', '.join(GPT2_MODELS) + " (pip install transformers), or a directory of a saved GPT2LMHeadModel")
    p.add_argument('--out_dir', default='out', help="directory holding ckpt.pt")
    p.add_argument('--start', default="\n", help="the prompt, or FILE:path to read it from a file")
    p.add_argument('--num_samples', type=int, default=10)
    p.add_argument('--max_new_tokens', type=int, default=500)
    p.add_argument('--temperature', type=float, default=0.8, help="< 1 less random, > 1 more random")
    p.add_argument('--top_k', type=int, default=200, help="keep only the top_k most likely tokens (0: all)")
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--device', default=default_device(), help="cpu, cuda, cuda:N or mps (default: the GPU where there is one)")
    p.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'], help="default: bfloat16 on a CUDA GPU that supports it, else float32")
    p.add_argument('--compile', type=boolean, nargs='?', const=True, default=False, help="True: compile the model with torch.compile")
    p.add_argument('--data_dir', default='', help="dataset directory (default: the one the checkpoint was trained on)")
    p.add_argument('--batch_size', type=int, default=256, help="images per batch (image checkpoints)")
    p.add_argument('--split', default='val', choices=['train', 'val'], help="image checkpoints: the split to score")
    p.add_argument('--ema', type=boolean, nargs='?', const=True, default=None,
                   help="True: the checkpoint's EMA of the weights (train.py's ema_decay); False: the weights; "
                   "default: the EMA where there is one")
    return p.parse_args(argv)


def main(argv=None):
    try:
        sample(parse_args(argv))
    except (ConfigError, DataError) as e:  # a wrong input: one line
        sys.exit(f"sample.py: error: {e}")


def sample(args):
    check_sample_args(args)  # and fills in the dtype, which follows the device
    torch.manual_seed(args.seed)
    ctx = autocast(args.device, args.dtype)

    if args.init_from == 'resume':
        ckpt_path = os.path.join(args.out_dir, 'ckpt.pt')
        try:
            stored = checkpoint.load(ckpt_path)  # on the CPU: only the model goes to the device
        except ConfigError as e:
            raise ConfigError(f"{e}; train a model first (python train.py ...) or check --out_dir") from None
        if args.ema and not stored.get('ema'):
            raise ConfigError(f"--ema=True, but {ckpt_path} holds no EMA of the weights (its run had ema_decay=0); "
                              "leave --ema out to use the weights")
        is_text = stored['model_type'] == 'text'
        ModelConfig, Model = (GPTConfig, GPT) if is_text else (ViTConfig, ViT)
        try:
            model = Model(ModelConfig(**stored['model_args']))
            model.load_state_dict(checkpoint.model_weights(stored, args.ema is not False))
        except (TypeError, ValueError, RuntimeError) as e:
            error = ' '.join(str(e).split())[:300]
            raise ConfigError(f"{ckpt_path}: its weights do not fit its model_args ({error})") from None
        if args.ema is not False and stored.get('ema'):
            print("the EMA of the weights (--ema=False for the weights)", file=sys.stderr)
        config, meta = stored['config'], stored.get('meta')  # meta: the dataset's tokenizer, in the checkpoint
        if meta is not None:
            check_meta(meta, f"the meta of {ckpt_path}", fix='the checkpoint is damaged')
        del stored  # the optimizer state
    else:  # GPT-2's weights, as nanoGPT's sample.py --init_from=gpt2
        try:
            model = GPT.from_pretrained(args.init_from)
        except (ValueError, ImportError, OSError) as e:
            raise ConfigError(e) from None
        is_text, config, meta = True, {}, dict(GPT2_BPE)
    model.eval().to(args.device)
    if args.data_dir or meta is None or not is_text:  # images: the val split is read from the dataset
        data_dir = args.data_dir or config.get('data_dir') or os.path.join('data', config['dataset'])
        try:
            meta = load_meta(data_dir, log=lambda line: print(line, file=sys.stderr))  # stdout holds the samples
        except DataError as e:
            raise DataError(f"{e} (or point --data_dir at a copy of the dataset)") from None
        check_fits(model.config, meta, data_dir, 'text' if is_text else 'image')
    if args.compile:
        model.compile()  # in place: generate() calls the module, so it runs compiled too

    if not is_text:  # the split, read from disk batch by batch (it may be ImageNet's) and scored as train.py evaluates
        data = ImageData(data_dir, meta, args.device, args.batch_size, model.config.image_size, augment=False, stream=True)
        loss_sum, correct, n = eval_sums(model, data.eval_batches(args.split, 0, 1), ctx).tolist()
        print(f"top-1 accuracy on {args.split}: {100 * correct / n:.2f}% ({int(n)} images), loss {loss_sum / n:.4f}")
        return

    encode, decode = get_tokenizer(meta)
    start_ids = prompt_ids(args.start, encode)  # FILE:path reads the prompt from a file
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
