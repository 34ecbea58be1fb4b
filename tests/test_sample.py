"""Tests for sample.py on a tiny char-level GPT and a tiny ViT, both trained here by train.py
on datasets made here by prepare_data.py (all in tmp dirs, on the CPU, in a few seconds)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import sample
from model import GPT, GPTConfig, ViT, ViTConfig

TORCH_LOAD = torch.load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONIOENCODING': 'utf-8'}  # tiny tensors; shared CPUs
SEP = '\n---------------\n'
TEXT = ("the quick brown fox jumps over the lazy dog.\n"  # lower case, no '-': the separator can't be sampled
        "a stitch in time saves nine, said the old tailor to his cat.\n") * 20
PROMPT = "the cat"
TRAIN = ['--device=cpu', '--dtype=float32', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=32',
         '--batch_size=8', '--gradient_accumulation_steps=1', '--eval_iters=2', '--warmup_iters=2',
         '--opt=adamw', '--learning_rate=1e-2', '--min_lr=1e-3', '--log_interval=1']


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, encoding='utf-8', timeout=120)


def check_run(script, *args):
    result = run(script, *args)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result


def sample_main(capsys, *args):
    """sample.py in this process (saves a torch import per call); its stdout."""
    capsys.readouterr()
    sample.main(list(args))
    return capsys.readouterr().out


@pytest.fixture(scope='module')
def text_run(tmp_path_factory):
    """(out_dir, data_dir) of a tiny GPT trained for 20 iterations on a char dataset."""
    tmp = tmp_path_factory.mktemp('text')
    (tmp / 'input.txt').write_text(TEXT, encoding='utf-8')
    data_dir, out_dir = tmp / 'data', tmp / 'out'
    check_run('prepare_data.py', 'shakespeare_char', f'--input={tmp / "input.txt"}', f'--out_dir={data_dir}')
    check_run('train.py', *TRAIN, '--block_size=16', '--max_iters=20', '--eval_interval=20', '--lr_decay_iters=20',
              f'--data_dir={data_dir}', f'--out_dir={out_dir}')
    assert (out_dir / 'ckpt.pt').is_file()
    return str(out_dir), str(data_dir)


def samples(out):
    parts = out.split(SEP)
    assert parts[-1] == '', f"output does not end with the separator: {out!r}"
    return parts[:-1]


def test_samples_start_with_prompt_and_have_the_right_length(text_run, capsys):
    out_dir, data_dir = text_run
    vocab = set(json.load(open(os.path.join(data_dir, 'meta.json')))['itos'])
    out = sample_main(capsys, f'--out_dir={out_dir}', f'--start={PROMPT}', '--num_samples=3',
                      '--max_new_tokens=30', '--device=cpu', '--dtype=float32')
    got = samples(out)
    assert len(got) == 3
    for s in got:
        assert s.startswith(PROMPT)
        assert len(s) == len(PROMPT) + 30  # char level: one token, one character; past block_size 16 too
        assert set(s) <= vocab


def test_seed_reproducible_and_different_seeds_differ(text_run, capsys):
    out_dir, _ = text_run
    args = [f'--out_dir={out_dir}', f'--start={PROMPT}', '--num_samples=2', '--max_new_tokens=40', '--device=cpu']
    a = sample_main(capsys, *args, '--seed=1')
    b = sample_main(capsys, *args, '--seed=1')
    c = sample_main(capsys, *args, '--seed=2')
    assert a == b
    assert a != c
    assert samples(a)[0] != samples(a)[1]  # the samples of one run differ from each other too


def test_temperature_sharpens_or_flattens_the_samples(text_run, capsys):
    """Same seed, two temperatures: the cold samples are the likelier ones under the model (mean
    log-probability per sampled token, read with the same window of block_size tokens as generate)."""
    out_dir, data_dir = text_run
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    stoi = {c: i for i, c in enumerate(json.load(open(os.path.join(data_dir, 'meta.json')))['itos'])}
    block = ckpt['model_args']['block_size']

    def mean_logprob(temperature):
        out = sample_main(capsys, f'--out_dir={out_dir}', f'--start={PROMPT}', '--num_samples=4', '--max_new_tokens=60',
                          f'--temperature={temperature}', '--top_k=0', '--seed=7', '--device=cpu')
        total = []
        for s in samples(out):
            ids = torch.tensor([stoi[c] for c in s])
            with torch.no_grad():
                for t in range(len(PROMPT), len(ids)):
                    logits, _ = model(ids[max(0, t - block):t][None])
                    total.append(torch.log_softmax(logits[0, -1], -1)[ids[t]].item())
        return out, sum(total) / len(total)

    (cold, cold_lp), (hot, hot_lp) = mean_logprob(0.5), mean_logprob(2.0)
    assert cold != hot
    assert cold_lp > hot_lp + 0.3, (cold_lp, hot_lp)

def test_prompt_from_file(text_run, capsys, tmp_path):
    out_dir, _ = text_run
    prompt = "a stitch\nin time"
    (tmp_path / 'prompt.txt').write_text(prompt, encoding='utf-8')
    out = sample_main(capsys, f'--out_dir={out_dir}', f'--start=FILE:{tmp_path / "prompt.txt"}', '--num_samples=2',
                      '--max_new_tokens=5', '--device=cpu')
    got = samples(out)
    assert len(got) == 2 and all(s.startswith(prompt) and len(s) == len(prompt) + 5 for s in got)


def test_data_dir_override(text_run, capsys, tmp_path):
    """A checkpoint moved to another machine: its recorded data_dir is gone, --data_dir points at the copy."""
    out_dir, data_dir = text_run
    with pytest.raises(SystemExit) as e:
        sample_main(capsys, f'--out_dir={out_dir}', f'--data_dir={tmp_path / "nowhere"}', '--device=cpu')
    assert 'meta.json missing' in str(e.value) and '--data_dir' in str(e.value) and '\n' not in str(e.value)
    out = sample_main(capsys, f'--out_dir={out_dir}', f'--data_dir={data_dir}', f'--start={PROMPT}',
                      '--num_samples=1', '--max_new_tokens=3', '--device=cpu')
    assert len(samples(out)) == 1


def test_checkpoint_decodes_without_its_data_dir(text_run, capsys, tmp_path, monkeypatch):
    """A checkpoint copied to another machine: the dataset is not there, the checkpoint's meta decodes."""
    out_dir, _ = text_run
    args = [f'--start={PROMPT}', '--num_samples=2', '--max_new_tokens=20', '--device=cpu']
    expected = sample_main(capsys, f'--out_dir={out_dir}', *args)
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
    ckpt['config']['data_dir'] = str(tmp_path / 'gone')
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    loads = []
    monkeypatch.setattr(torch, 'load', lambda *a, **kw: loads.append(kw.get('map_location')) or TORCH_LOAD(*a, **kw))
    assert sample_main(capsys, f'--out_dir={tmp_path}', *args) == expected
    assert loads == ['cpu']  # the optimizer state stays on the CPU whatever --device is; only the model moves
    del ckpt['meta']  # a checkpoint from before the meta was stored: the dataset is needed, and the error says so
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    with pytest.raises(SystemExit, match='meta.json missing'):
        sample_main(capsys, f'--out_dir={tmp_path}', *args)


@pytest.mark.parametrize('arg, value', [('--compile=True', True), ('--compile=False', False), ('--compile', True), (None, False)])
def test_compile_takes_true_or_false(arg, value):
    assert sample.parse_args([arg] if arg else []).compile is value


def test_compile_rejects_other_words():
    with pytest.raises(SystemExit) as e:
        sample.parse_args(['--compile=yes'])
    assert e.value.code == "sample.py: error: argument --compile: expected True or False, got 'yes'"  # one line, no usage


def test_padded_vocab_never_samples_padding(text_run, capsys, tmp_path):
    """train.py's --vocab_size pads the vocabulary (GPT-2: 50257 -> 50304); the padding ids have no characters.
    Here the padding rows are made large, so that sampling them is likely unless sample.py masks them."""
    out_dir, data_dir = text_run
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
    V = ckpt['model_args']['vocab_size']
    ckpt['model_args']['vocab_size'] = 64
    torch.manual_seed(0)
    weight = torch.cat([ckpt['model']['lm_head.weight'], 5 * torch.randn(64 - V, ckpt['model_args']['n_embd'])])
    ckpt['model']['lm_head.weight'] = ckpt['model']['transformer.wte.weight'] = weight
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    vocab = set(json.load(open(os.path.join(data_dir, 'meta.json')))['itos'])
    out = sample_main(capsys, f'--out_dir={tmp_path}', f'--start={PROMPT}', '--num_samples=2', '--max_new_tokens=50',
                      '--temperature=2', '--top_k=0', '--device=cpu')
    assert all(len(s) == len(PROMPT) + 50 and set(s) <= vocab for s in samples(out))


def test_unknown_prompt_characters_fail_in_one_line(text_run):
    out_dir, _ = text_run
    result = run('sample.py', f'--out_dir={out_dir}', '--start=the Zebra €', '--device=cpu', '--max_new_tokens=2')
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'Z'" in lines[0] and "'€'" in lines[0] and 'vocabulary' in lines[0]
    assert result.stdout == ''


def test_missing_checkpoint_fails_cleanly(tmp_path, capsys):
    """In process (saves a torch import): sys.exit with a message, which Python prints as one line, no traceback."""
    with pytest.raises(SystemExit) as e:
        sample_main(capsys, f'--out_dir={tmp_path}', '--device=cpu')
    message = e.value.code
    assert isinstance(message, str) and '\n' not in message  # a str code: exit status 1, printed to stderr
    assert 'ckpt.pt' in message and 'train' in message and '--out_dir' in message
    assert capsys.readouterr().out == ''


@pytest.mark.parametrize('args, ckpt, words', [
    (['--top_k=-3'], None, '--top_k must be at least 0, got -3'),
    (['--max_new_tokens=-5'], None, '--max_new_tokens must be at least 1, got -5'),
    (['--num_samples=0'], None, '--num_samples must be at least 1'),
    (['--dtype=fp16'], None, "argument --dtype: invalid choice: 'fp16'"),
    (['--device=gpu'], None, "unknown device 'gpu'"),
    pytest.param(['--device=cuda'], None, 'no CUDA device', marks=pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA here')),
    ([], 'corrupted', 'is not a readable checkpoint'),
    ([], 'truncated', 'is not a readable checkpoint'),
    ([], 'empty', 'is not a readable checkpoint'),
    ([], 'foreign', 'is not a checkpoint of train.py (it lacks model, model_args'),
    (['--temperature=nan'], None, '--temperature must be a number > 0, got nan'),
    (['--seed=18446744073709551616'], None, '--seed must be in 0..2**63-1'),
    (['--start=FILE:BINARY'], None, 'is not UTF-8 text'),
    (['--data_dir=BPE'], None, 'the model knows'),
    (['--data_dir=BPE', 'NO_TIKTOKEN'], 'bpe_meta', 'tiktoken cannot load the gpt2 encoding'),
    ([], 'missing_weight', 'Missing key(s) in state_dict: "transformer.wte.weight", "lm_head.weight"'),
], ids=['top_k', 'max_new_tokens', 'num_samples', 'dtype', 'device=gpu', 'device=cuda', 'corrupted', 'truncated', 'empty', 'foreign',
        'temperature=nan', 'seed', 'binary prompt file', 'BPE data for a char model', 'no tiktoken cache', 'a weight missing'])
def test_bad_input_fails_in_one_line(text_run, capsys, tmp_path, monkeypatch, args, ckpt, words):
    out_dir, _ = text_run
    (tmp_path / 'binary').write_bytes(bytes(range(256)))
    bpe = tmp_path / 'bpe'  # nanoGPT's GPT-2 BPE files: a vocabulary of 50257, the char model's is 28
    bpe.mkdir()
    for split in ('train', 'val'):
        np.zeros(64, dtype=np.uint16).tofile(bpe / f'{split}.bin')
    args = [a.replace('BINARY', str(tmp_path / 'binary')).replace('BPE', str(bpe)) for a in args if a != 'NO_TIKTOKEN']
    if ckpt == 'bpe_meta':  # a GPT-2 BPE checkpoint where tiktoken has no cache and no network
        stored = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
        stored['meta'] = {'kind': 'text', 'tokenizer': 'gpt2', 'vocab_size': 50257}
        stored['model_args']['vocab_size'] = 50304
        for k in ('lm_head.weight', 'transformer.wte.weight'):
            stored['model'][k] = torch.zeros(50304, stored['model_args']['n_embd'])
        torch.save(stored, tmp_path / 'ckpt.pt')
        args = [a for a in args if not a.startswith('--data_dir')]
        monkeypatch.setattr('tiktoken.get_encoding', lambda name: (_ for _ in ()).throw(ConnectionError('offline')))
        out_dir, ckpt = str(tmp_path), None
    if ckpt:
        good = open(os.path.join(out_dir, 'ckpt.pt'), 'rb').read()
        if ckpt == 'foreign':
            torch.save({'weights': torch.zeros(2)}, tmp_path / 'ckpt.pt')
        elif ckpt == 'missing_weight':  # the tied head's one tensor, saved under both names
            stored = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
            for k in ('lm_head.weight', 'transformer.wte.weight'):
                del stored['model'][k]
            torch.save(stored, tmp_path / 'ckpt.pt')
        else:
            (tmp_path / 'ckpt.pt').write_bytes({'corrupted': b'\x00' * 64 + good[64:], 'truncated': good[:len(good) // 2],
                                                'empty': b''}[ckpt])
        out_dir = str(tmp_path)
    before = open(os.path.join(out_dir, 'ckpt.pt'), 'rb').read()
    with pytest.raises(SystemExit) as e:
        sample_main(capsys, f'--out_dir={out_dir}', f'--start={PROMPT}', '--device=cpu', *args)
    message = e.value.code  # a str: Python prints it to stderr and exits with status 1
    assert isinstance(message, str) and '\n' not in message and message.startswith('sample.py: error: ')
    assert words in message, message
    assert capsys.readouterr().out == ''
    assert open(os.path.join(out_dir, 'ckpt.pt'), 'rb').read() == before


def test_one_line_error_as_a_process(tmp_path):
    (tmp_path / 'ckpt.pt').write_bytes(b'')
    result = run('sample.py', f'--out_dir={tmp_path}', '--device=cpu')
    assert result.returncode == 1 and result.stdout == ''
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and 'not a readable checkpoint' in result.stderr


# ----------------------------------------------------------------------------------------
# image checkpoints: top-1 accuracy on val

@pytest.fixture(scope='module')
def image_run(tmp_path_factory):
    """(out_dir, data_dir) of a tiny ViT trained for 6 iterations on 8x8 RGB images of 3 classes."""
    tmp = tmp_path_factory.mktemp('image')
    rng = np.random.default_rng(0)
    def split(n):  # class k: mostly channel k bright, so a few steps already learn something
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 100, (n, 8, 8, 3))
        x[np.arange(n), :, :, y] += 120
        return x.astype(np.uint8), y
    (xt, yt), (xv, yv) = split(64), split(37)  # 37: the last eval batch is partial
    np.savez(tmp / 'tiny.npz', x_train=xt, y_train=yt, x_test=xv, y_test=yv)
    data_dir, out_dir = tmp / 'data', tmp / 'out'
    check_run('prepare_data.py', 'npz', f'--input={tmp / "tiny.npz"}', f'--out_dir={data_dir}')
    check_run('train.py', *TRAIN, '--patch_size=4', '--max_iters=6', '--eval_interval=6', '--lr_decay_iters=6',
              f'--data_dir={data_dir}', f'--out_dir={out_dir}')
    return str(out_dir), str(data_dir)


def test_image_accuracy_matches_checkpoint_and_train_log(image_run, capsys):
    out_dir, data_dir = image_run
    out = sample_main(capsys, f'--out_dir={out_dir}', '--device=cpu', '--batch_size=16')
    m = re.fullmatch(r"top-1 accuracy on val: ([\d.]+)% \((\d+) images\), loss ([\d.]+)\n", out)
    assert m, out
    acc, n, loss = float(m[1]), int(m[2]), float(m[3])
    assert n == 37 and 0 <= acc <= 100

    # the same number computed here from the checkpoint
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
    assert ckpt['model_type'] == 'image'
    model = ViT(ViTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    model.eval()
    meta = json.load(open(os.path.join(data_dir, 'meta.json')))
    x = torch.from_numpy(np.load(os.path.join(data_dir, 'val_x.npy'))).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(meta['mean']).view(1, -1, 1, 1)) / torch.tensor(meta['std']).view(1, -1, 1, 1)
    y = torch.from_numpy(np.load(os.path.join(data_dir, 'val_y.npy')))
    with torch.no_grad():
        logits, my_loss = model(x, y)
    my_acc = 100 * (logits.argmax(-1) == y).float().mean().item()
    assert acc == pytest.approx(my_acc, abs=0.006)  # printed with 2 decimals
    assert loss == pytest.approx(my_loss.item(), abs=1e-4)

    # and train.py's own eval at the last iteration, with the weights it saved then
    records = [json.loads(line) for line in open(os.path.join(out_dir, 'log.jsonl'))]
    last = [r for r in records if r['iter'] == ckpt['iter_num'] and 'val_acc' in r][-1]
    assert acc == pytest.approx(100 * last['val_acc'], abs=0.006)
    assert loss == pytest.approx(last['val_loss'], abs=1e-3)


# ----------------------------------------------------------------------------------------
# GPT-2's weights without a checkpoint (a random GPT2LMHeadModel saved here stands in for OpenAI's)

def test_init_from_gpt2_greedy_matches_transformers(tmp_path, capsys):
    transformers = pytest.importorskip('transformers')
    tiktoken = pytest.importorskip('tiktoken')
    try:  # online, or offline from $TIKTOKEN_CACHE_DIR
        enc = tiktoken.get_encoding('gpt2')
    except Exception as e:
        pytest.skip(f"tiktoken cannot load gpt2 here (offline, no TIKTOKEN_CACHE_DIR?): {type(e).__name__}")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32,
                                                              activation_function='gelu')).eval()  # exact GELU, as here
    hf.save_pretrained(tmp_path)
    out = sample_main(capsys, f'--init_from={tmp_path}', '--start=<|endoftext|>Hello', '--num_samples=1',
                      '--max_new_tokens=12', '--top_k=1', '--device=cpu')
    prompt = [enc.eot_token] + enc.encode_ordinary('Hello')  # '<|endoftext|>' is the EOT token, as in nanoGPT
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=enc.eot_token)
    assert samples(out) == [enc.decode(expected[0].tolist())]


@pytest.fixture(scope='module')
def gray_data(tmp_path_factory):
    """8x8 images of one channel in 3 classes: Fashion-MNIST's kind of data, where image_run is CIFAR's."""
    tmp = tmp_path_factory.mktemp('gray')
    x, y = np.random.default_rng(1).integers(0, 255, (20, 8, 8), dtype=np.uint8), np.arange(20) % 3
    np.savez(tmp / 'gray.npz', x_train=x, y_train=y, x_test=x, y_test=y)
    check_run('prepare_data.py', 'npz', f'--input={tmp / "gray.npz"}', f'--out_dir={tmp / "data"}')
    return str(tmp / 'data')


@pytest.mark.parametrize('run, case, words', [
    ('text', 'image data', 'holds image data, and the checkpoint a model of text'),
    ('image', 'text data', 'holds text data, and the checkpoint a model of image'),
    ('image', 'gray data', '8x8 images of 1 channel(s) in 3 classes, and the model reads 8x8 of 3 in 3'),
    ('text', 'meta against its itos', 'its itos has 3 characters, its vocab_size is'),
    ('text', '--ema=True', '--ema=True, but'),
])
def test_other_data_a_damaged_meta_or_a_missing_ema_is_one_line(text_run, image_run, gray_data, capsys, tmp_path,
                                                                 run, case, words):
    out_dir = (text_run if run == 'text' else image_run)[0]
    args = {'image data': [f'--data_dir={image_run[1]}'], 'text data': [f'--data_dir={text_run[1]}'],
            'gray data': [f'--data_dir={gray_data}'], '--ema=True': ['--ema=True']}.get(case, [])
    if case == 'meta against its itos':
        stored = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
        stored['meta']['itos'] = stored['meta']['itos'][:3]
        torch.save(stored, tmp_path / 'ckpt.pt')
        out_dir = str(tmp_path)
    before = open(os.path.join(out_dir, 'ckpt.pt'), 'rb').read()
    with pytest.raises(SystemExit) as e:
        sample_main(capsys, f'--out_dir={out_dir}', f'--start={PROMPT}', '--device=cpu', '--max_new_tokens=5', *args)
    message = e.value.code
    assert isinstance(message, str) and '\n' not in message and message.startswith('sample.py: error: ')
    assert words in message, message
    assert open(os.path.join(out_dir, 'ckpt.pt'), 'rb').read() == before


def test_ema_false_or_left_out_on_a_checkpoint_without_ema_scores_the_weights(image_run, capsys):
    out_dir, _ = image_run
    outs = {arg: sample_main(capsys, f'--out_dir={out_dir}', '--device=cpu', *arg) for arg in ((), ('--ema=False',))}
    assert outs[()] == outs[('--ema=False',)] and 'top-1 accuracy on val' in outs[()]
