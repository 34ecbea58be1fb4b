"""Tests for model.py: DNT-GPT / DNT-ViT, the norm switches and presets, mSGDW, generate.

Everything runs on tiny models on the CPU in a few seconds; the GPT-2 124M checks build
their models on the meta device (shapes only, no memory, no init cost).
"""
import importlib.util
import math
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M
from optim import SGDW, Lion

L, H, C = 2, 2, 32  # tiny trunk: layers, heads, width
GPT_TINY = dict(n_layer=L, n_head=H, n_embd=C, block_size=16, vocab_size=50)
VIT_TINY = dict(n_layer=L, n_head=H, n_embd=C, image_size=8, patch_size=4, num_classes=10)
KINDS = ('gpt', 'vit-cls', 'vit-mean')
PRESETS = sorted(M.PRESETS)
NORM_CLASS = {'layernorm': nn.LayerNorm, 'rmsnorm': nn.RMSNorm}


def make(kind, seed=0, **kw):
    torch.manual_seed(seed)
    if kind == 'gpt':
        return M.GPT(M.GPTConfig(**{**GPT_TINY, **kw}))
    return M.ViT(M.ViTConfig(**{**VIT_TINY, 'pool': kind.split('-')[1], **kw}))


def batch(model, b=2, seed=1):
    """(inputs, targets) for a model; GPT sequences fill the whole block so every wpe row is used."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    if isinstance(model, M.GPT):
        idx = torch.randint(0, cfg.vocab_size, (b, cfg.block_size + 1), generator=g)
        return idx[:, :-1].contiguous(), idx[:, 1:].contiguous()  # as a data loader gives them
    dtype = next(model.parameters()).dtype
    img = torch.randn(b, cfg.in_chans, cfg.image_size, cfg.image_size, generator=g).to(dtype)
    return img, torch.randint(0, cfg.num_classes, (b,), generator=g)


def outputs(model, x, y):
    """(logits, output of the last block); GPT logits for every position (targets given)."""
    seen = []
    handle = model.transformer.h[-1].register_forward_hook(lambda mod, inp, out: seen.append(out))
    try:
        logits, _ = model(x, y)
    finally:
        handle.remove()
    return logits, seen[0]


def norm_count(model):
    return sum(isinstance(m, (nn.LayerNorm, nn.RMSNorm)) for m in model.modules())


def rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ----------------------------------------------------------------------------------------
# forward / backward everywhere

@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('norm', M.NORMS)
@pytest.mark.parametrize('preset', PRESETS)
@pytest.mark.parametrize('kind', KINDS)
def test_forward_backward_all_params_train(kind, preset, norm, bias):
    model = make(kind, preset=preset, norm=norm, bias=bias)
    x, y = batch(model)
    logits, loss = model(x, y)
    n_out = model.config.vocab_size if kind == 'gpt' else model.config.num_classes
    assert logits.shape == ((2, GPT_TINY['block_size'], n_out) if kind == 'gpt' else (2, n_out))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert abs(loss.item() - math.log(n_out)) < 0.5  # small init: close to uniform predictions
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f'{name} gets no gradient'
        assert torch.isfinite(p.grad).all(), f'{name} has a non-finite gradient'
        assert p.grad.abs().sum() > 0, f'{name} has an all-zero gradient'
    # inference: no loss; GPT returns only the last position's logits
    with torch.no_grad():
        logits_inf, loss_inf = model(x)
    assert loss_inf is None
    expected = logits[:, [-1], :] if kind == 'gpt' else logits
    torch.testing.assert_close(logits_inf, expected.detach())


def reference_attention(attn, x, causal):
    """nanoGPT's attention written out: split q, k, v by columns, heads, explicit mask and softmax."""
    B, T, Cx = x.shape
    q, k, v = attn.c_attn(x).split(Cx, dim=2)
    q, k, v = (t.view(B, T, attn.n_head, Cx // attn.n_head) for t in (q, k, v))
    q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if causal:
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).tril().logical_not(), float('-inf'))
    y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, Cx)
    return attn.c_proj(y)


def reference_forward(model, x):
    """The DNT data flow of the module docstring / paper, written out from the model's own modules."""
    tr, gpt = model.transformer, isinstance(model, M.GPT)
    if gpt:
        h = tr.wte(x) + tr.wpe(torch.arange(x.size(1)))
    else:
        h = tr.patch(x).flatten(2).transpose(1, 2)
        if model.config.pool == 'cls':
            h = torch.cat([model.cls_token.expand(h.size(0), 1, -1), h], dim=1)
        h = h + tr.wpe.weight
    h = tr.ln_in(h)
    for blk in tr.h:
        h = h + blk.ln_mid_1(reference_attention(blk.attn, blk.ln_1(h), causal=gpt))
        h = h + blk.ln_mid_2(blk.mlp.c_proj(F.gelu(blk.mlp.c_fc(blk.ln_2(h)))))
    h = tr.ln_f(h)
    if gpt:
        return model.lm_head(h)
    return model.head(h[:, 0] if model.config.pool == 'cls' else h.mean(dim=1))


@pytest.mark.parametrize('norm', M.NORMS)
@pytest.mark.parametrize('preset', PRESETS)
@pytest.mark.parametrize('kind', KINDS)
def test_matches_reference_forward(kind, preset, norm):
    model = make(kind, preset=preset, norm=norm, bias=True).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norm gains and biases too
            p.add_(0.05 * torch.randn_like(p))
        x, y = batch(model)
        logits, _ = model(x, y)
        torch.testing.assert_close(logits, reference_forward(model, x), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------
# GPT-2 small: nanoGPT's parameter counts and state_dict

def nanogpt_state_shapes(n_layer, n_embd, block_size, vocab_size, bias):
    """nanoGPT's GPT state_dict keys (in order) and shapes; flash-attention version, no mask buffer."""
    Cn, shapes = n_embd, {'transformer.wte.weight': (vocab_size, n_embd), 'transformer.wpe.weight': (block_size, n_embd)}

    def linear(name, n_out, n_in):
        shapes[f'{name}.weight'] = (n_out, n_in)
        if bias:
            shapes[f'{name}.bias'] = (n_out,)

    def layernorm(name):
        shapes[f'{name}.weight'] = (Cn,)
        if bias:
            shapes[f'{name}.bias'] = (Cn,)

    for i in range(n_layer):
        p = f'transformer.h.{i}.'
        layernorm(p + 'ln_1')
        linear(p + 'attn.c_attn', 3 * Cn, Cn)
        linear(p + 'attn.c_proj', Cn, Cn)
        layernorm(p + 'ln_2')
        linear(p + 'mlp.c_fc', 4 * Cn, Cn)
        linear(p + 'mlp.c_proj', Cn, 4 * Cn)
    layernorm('transformer.ln_f')
    shapes['lm_head.weight'] = (vocab_size, Cn)
    return shapes


def assert_nanogpt_state_dict(model):
    cfg = model.config
    expected = nanogpt_state_shapes(cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.vocab_size, cfg.bias)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(expected)
    assert got == expected


@pytest.mark.parametrize('vocab_size, bias, n_params', [(50257, True, 124_439_808), (50304, False, 124_373_760)])
def test_gpt2_small_matches_nanogpt(vocab_size, bias, n_params):
    with torch.device('meta'):
        model = M.GPT(M.GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024,
                                  vocab_size=vocab_size, bias=bias, preset='standard'))
    assert model.get_num_params(non_embedding=False) == n_params
    assert model.get_num_params() == n_params - 1024 * 768  # wpe left out by default
    assert model.lm_head.weight is model.transformer.wte.weight
    assert_nanogpt_state_dict(model)


@pytest.mark.parametrize('bias', [False, True])
def test_standard_tiny_state_dict_is_nanogpts(bias):
    model = make('gpt', preset='standard', bias=bias)
    assert_nanogpt_state_dict(model)
    assert M.GPTConfig().preset == 'standard' and M.ViTConfig().preset == 'standard'


# ----------------------------------------------------------------------------------------
# causality

@pytest.mark.parametrize('norm', M.NORMS)
@pytest.mark.parametrize('preset', ['standard', 'dnt'])
def test_gpt_is_causal(preset, norm):
    model = make('gpt', preset=preset, norm=norm).eval()
    idx, _ = batch(model)
    T, V = idx.size(1), model.config.vocab_size
    with torch.no_grad():
        base, _ = model(idx, idx)
        for t in range(1, T):
            changed = idx.clone()
            changed[:, t:] = (idx[:, t:] + 1 + torch.randint(0, V - 1, idx[:, t:].shape)) % V  # every token >= t differs
            logits, _ = model(changed, changed)
            torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert (logits[:, t] - base[:, t]).abs().max() > 1e-4  # and position t does see its own token


@pytest.mark.parametrize('preset', ['standard', 'dnt'])
@pytest.mark.parametrize('kind', ['vit-cls', 'vit-mean'])
def test_vit_is_not_causal(kind, preset):
    model = make(kind, preset=preset).eval()
    img, y = batch(model)
    changed = img.clone()
    p = model.config.patch_size
    changed[:, :, -p:, -p:] += 1.0  # the last patch only
    with torch.no_grad():
        logits0, h0 = outputs(model, img, y)
        logits1, h1 = outputs(model, changed, y)
    assert (logits1 - logits0).abs().max() > 1e-4
    assert (h1[:, 0] - h0[:, 0]).abs().max() > 1e-4  # the first token (cls or first patch) sees the last patch


# ----------------------------------------------------------------------------------------
# the DNT property: a weight that feeds a norm can be scaled without changing the function

def _scale(mod, s, rows=None):
    sl = slice(None) if rows is None else slice(0, rows)
    mod.weight[sl] *= s
    if getattr(mod, 'bias', None) is not None:
        mod.bias[sl] *= s


def scale_qk(model, s):  # rows [0:C] are q, [C:2C] are k
    for blk in model.transformer.h:
        _scale(blk.attn.c_attn, s, rows=2 * blk.attn.c_attn.in_features)


def scale_attn_proj(model, s):
    for blk in model.transformer.h:
        _scale(blk.attn.c_proj, s)


def scale_mlp_proj(model, s):
    for blk in model.transformer.h:
        _scale(blk.mlp.c_proj, s)


def scale_embedding(model, s):
    tr = model.transformer
    _scale(tr.wte if isinstance(model, M.GPT) else tr.patch, s)
    tr.wpe.weight *= s
    if getattr(model, 'cls_token', None) is not None:
        model.cls_token *= s


# scaling: the switch that makes the model invariant to it
SCALINGS = {scale_qk: 'qk_norm', scale_attn_proj: 'mid_norm', scale_mlp_proj: 'mid_norm', scale_embedding: 'input_norm'}


@pytest.mark.parametrize('norm', ['rmsnorm', 'layernorm-eps0'])
@pytest.mark.parametrize('preset', PRESETS)
@pytest.mark.parametrize('scaling', list(SCALINGS), ids=lambda f: f.__name__)
@pytest.mark.parametrize('kind', KINDS)
def test_scale_invariance(kind, scaling, preset, norm):
    """In float64 the model is invariant exactly when the switch for that weight is on, else not.

    RMSNorm keeps its own eps (float64 machine eps). LayerNorm's eps=1e-5 is comparable to the
    variance of the tiny init activations, so there eps is set to 0 and biases are on (and scaled
    with their weights): that isolates where the norms sit from the value of eps.
    """
    layernorm = norm.startswith('layernorm')
    model = make(kind, preset=preset, norm=norm.split('-')[0], bias=layernorm).double().eval()
    if layernorm:
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = 0.0
    x, y = batch(model)
    s = 3.0
    with torch.no_grad():
        logits0, h0 = outputs(model, x, y)
        scaling(model, s)
        logits1, h1 = outputs(model, x, y)
    if getattr(model.config, SCALINGS[scaling]):
        assert rel_diff(h1, h0) < 1e-9  # the trunk's output does not change
        # the GPT head is tied to wte: scaling wte scales the logits by exactly s (final_norm is on)
        tied = kind == 'gpt' and scaling is scale_embedding
        torch.testing.assert_close(logits1, s * logits0 if tied else logits0, rtol=1e-9, atol=1e-9)
    else:  # negative control: the same scaling does change a model without that norm
        assert rel_diff(h1, h0) > 1e-3
        assert rel_diff(logits1, logits0) > 1e-3


# ----------------------------------------------------------------------------------------
# norm switches and presets

def positions(model, switch):
    tr = model.transformer
    return {
        'input_norm': lambda: [tr.ln_in],
        'mlp_prenorm': lambda: [b.ln_2 for b in tr.h],
        'qk_norm': lambda: [n for b in tr.h for n in (b.attn.q_norm, b.attn.k_norm)],
        'mid_norm': lambda: [n for b in tr.h for n in (b.ln_mid_1, b.ln_mid_2)],
        'final_norm': lambda: [tr.ln_f],
    }[switch]()


SWITCH_SIZE = {  # switch: (number of norms it adds, their width)
    'input_norm': (1, C), 'mlp_prenorm': (L, C), 'qk_norm': (2 * L, C // H), 'mid_norm': (2 * L, C), 'final_norm': (1, C)}


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('norm', M.NORMS)
@pytest.mark.parametrize('switch', list(SWITCH_SIZE))
@pytest.mark.parametrize('kind', ['gpt', 'vit-cls'])
def test_switch_adds_its_norms(kind, switch, norm, bias):
    on = make(kind, norm=norm, bias=bias, **{switch: True})
    off = make(kind, norm=norm, bias=bias, **{switch: False})
    n, width = SWITCH_SIZE[switch]
    per_norm = width * (2 if norm == 'layernorm' and bias else 1)  # RMSNorm has no bias
    assert norm_count(on) - norm_count(off) == n
    assert on.get_num_params(non_embedding=False) - off.get_num_params(non_embedding=False) == n * per_norm
    assert all(type(m) is nn.Identity for m in positions(off, switch))
    assert all(type(m) is NORM_CLASS[norm] and tuple(m.normalized_shape) == (width,) for m in positions(on, switch))
    assert len(positions(on, switch)) == n
    # the pre-norm before attention is not a switch: always there
    assert all(type(b.ln_1) is NORM_CLASS[norm] for b in on.transformer.h + off.transformer.h)


@pytest.mark.parametrize('preset', PRESETS)
@pytest.mark.parametrize('kind', ['gpt', 'vit-cls'])
def test_preset_fills_switches(kind, preset):
    model = make(kind, preset=preset)
    for switch, on in M.PRESETS[preset].items():
        assert getattr(model.config, switch) is on
        assert all((type(m) is not nn.Identity) == on for m in positions(model, switch))
    assert model.config.final_norm is True


def test_explicit_switch_overrides_preset():
    model = make('gpt', preset='dnt', mid_norm=False)
    cfg = model.config
    assert (cfg.input_norm, cfg.mlp_prenorm, cfg.qk_norm, cfg.mid_norm) == (True, False, True, False)
    assert all(type(m) is nn.Identity for m in positions(model, 'mid_norm'))
    assert all(type(m) is nn.LayerNorm for m in positions(model, 'qk_norm'))
    cfg = M.ViTConfig(preset='standard', qk_norm=True, input_norm=True, final_norm=False)
    assert (cfg.input_norm, cfg.mlp_prenorm, cfg.qk_norm, cfg.mid_norm, cfg.final_norm) == (True, True, True, False, False)


def test_presets_follow_the_papers_ablation():
    P = M.PRESETS
    assert P['standard'] == P['s1'] and P['dnt'] == P['s5']
    assert P['s1'] == dict(input_norm=False, mlp_prenorm=True, qk_norm=False, mid_norm=False)
    assert P['s2'] == {**P['s1'], 'qk_norm': True}
    assert P['s3'] == {**P['s2'], 'input_norm': True}
    assert P['s4'] == {**P['s3'], 'mid_norm': True}
    assert P['s5'] == {**P['s4'], 'mlp_prenorm': False}


# ----------------------------------------------------------------------------------------
# optimizers

def param_ids(params):
    return [id(p) for p in params]


@pytest.mark.parametrize('name', ['msgdw', 'adamw', 'lion'])
@pytest.mark.parametrize('kind', ['gpt', 'vit-cls'])
def test_configure_optimizers_groups(kind, name):
    model = make(kind, preset='dnt', bias=True)
    lr, wd = 0.1, 0.05
    opt = model.configure_optimizers(name, lr, wd)
    assert type(opt) is dict(msgdw=SGDW, adamw=torch.optim.AdamW, lion=Lion)[name]
    assert len(opt.param_groups) == 2
    decay, no_decay = opt.param_groups
    params = list(model.parameters())
    matrices, vectors = [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
    assert sorted(param_ids(decay['params'])) == sorted(param_ids(matrices)) and len(decay['params']) == len(matrices)
    assert sorted(param_ids(no_decay['params'])) == sorted(param_ids(vectors)) and len(no_decay['params']) == len(vectors)
    assert len(matrices) > 0 and len(vectors) > 0
    key = 'decoupled_weight_decay' if name == 'msgdw' else 'weight_decay'
    assert (decay[key], no_decay[key]) == (wd, 0.0)
    if name == 'msgdw':  # torch's own (coupled, L2) weight decay stays off
        assert decay['weight_decay'] == no_decay['weight_decay'] == 0.0
        assert (decay['momentum'], decay['nesterov']) == (0.9, False)
        extra = model.configure_optimizers(name, lr, wd, momentum=0.8, nesterov=True).param_groups[0]
        assert (extra['momentum'], extra['nesterov']) == (0.8, True)
    else:
        assert decay['betas'] == (0.9, 0.95)
        assert model.configure_optimizers(name, lr, wd, betas=(0.8, 0.9)).param_groups[0]['betas'] == (0.8, 0.9)
    # behaviour: with zero gradients one step only decays, and only the matrices
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, p0 in zip(params, before):
        torch.testing.assert_close(p.detach(), p0 * (1 - lr * wd) if p.dim() >= 2 else p0, rtol=1e-6, atol=0)


def test_lion_step_by_hand():
    """Two Lion steps against the update written out: decay, the sign of the interpolation, then the buffer."""
    lr, wd, (b1, b2) = 0.01, 0.5, (0.9, 0.99)
    p0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    g1 = torch.tensor([[0.3, -0.1], [0.0, 2.0]], dtype=torch.float64)
    g2 = torch.tensor([[-0.4, -0.2], [0.1, -0.01]], dtype=torch.float64)
    p, frozen = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())
    opt = Lion([p, frozen], lr=lr, betas=(b1, b2), weight_decay=wd)
    p.grad = g1.clone()
    opt.step()
    # step 1: m = 0, so the step is sign(g1): a zero gradient entry stays put apart from the decay
    p1 = p0 * (1 - lr * wd) - lr * torch.tensor([[1.0, -1.0], [0.0, 1.0]], dtype=torch.float64)
    m1 = (1 - b2) * g1
    torch.testing.assert_close(p.detach(), p1, rtol=1e-14, atol=1e-14)
    p.grad = g2.clone()
    opt.step()
    # step 2: c = 0.9 m1 + 0.1 g2 = [[-0.0373, -0.0209], [0.01, 0.017]]: the sign of c, not of g2, at [1, 1]
    c = b1 * m1 + (1 - b1) * g2
    assert torch.equal(torch.sign(c), torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64))
    p2 = p1 * (1 - lr * wd) - lr * torch.sign(c)
    torch.testing.assert_close(p.detach(), p2, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(opt.state[p]['exp_avg'], b2 * m1 + (1 - b2) * g2, rtol=1e-14, atol=1e-14)
    assert torch.equal(frozen.detach(), p0) and frozen not in opt.state


def test_configure_optimizers_unknown_name():
    with pytest.raises(ValueError, match='unknown optimizer'):
        make('gpt').configure_optimizers('sgd', 0.1, 0.0)


@pytest.mark.parametrize('fused', [False, True])
@pytest.mark.parametrize('nesterov', [False, True])
def test_sgdw_step_by_hand(nesterov, fused):
    lr, wd, mu = 0.5, 0.1, 0.9
    g = torch.Generator().manual_seed(0)
    p0, g1, g2 = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    p, frozen = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())  # frozen never gets a gradient
    opt = SGDW([p, frozen], lr=lr, momentum=mu, weight_decay=wd, nesterov=nesterov, fused=fused)
    p.grad = g1.clone()
    opt.step()
    b1 = g1
    p1 = p0 * (1 - lr * wd) - lr * ((g1 + mu * b1) if nesterov else b1)
    torch.testing.assert_close(p.detach(), p1, rtol=1e-14, atol=1e-14)
    p.grad = g2.clone()
    opt.step()
    b2 = mu * b1 + g2
    p2 = p1 * (1 - lr * wd) - lr * ((g2 + mu * b2) if nesterov else b2)
    torch.testing.assert_close(p.detach(), p2, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(opt.state[p]['momentum_buffer'], b2, rtol=1e-14, atol=1e-14)
    assert torch.equal(frozen.detach(), p0) and frozen not in opt.state  # like torch's SGD: no grad, no decay


@pytest.mark.parametrize('momentum, nesterov', [(0.9, False), (0.9, True), (0.0, False)])
def test_sgdw_is_torchs_sgd_after_the_decay_bit_for_bit(momentum, nesterov):
    """SGDW.step against the decoupled decay followed by torch's SGD (its single-tensor path, the CPU's): the
    same float32 weights and buffers, bit for bit, at every step, so that recorded runs still reproduce."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 7, generator=g), torch.randn(7, generator=g), torch.randn(3, generator=g)]
    grads = [[torch.randn_like(p) for p in start[:2]] for _ in range(5)]  # the last weight never gets one
    ours, theirs = [nn.Parameter(p.clone()) for p in start], [nn.Parameter(p.clone()) for p in start]
    wds = (0.1, 0.0)
    opt = SGDW([dict(params=ours[:1], weight_decay=wds[0]), dict(params=ours[1:], weight_decay=wds[1])],
               lr=0.3, momentum=momentum, nesterov=nesterov)
    sgd = torch.optim.SGD([dict(params=theirs[:1]), dict(params=theirs[1:])], lr=0.3, momentum=momentum,
                          nesterov=nesterov, foreach=False)
    for i, step_grads in enumerate(grads):
        for group in (*opt.param_groups, *sgd.param_groups):
            group['lr'] = 0.3 * (i + 1) / len(grads)  # a schedule, as in train.py
        for params in (ours, theirs):
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
        opt.step()
        with torch.no_grad():
            for group, wd in zip(sgd.param_groups, wds):
                for p in group['params']:
                    if p.grad is not None:
                        p.mul_(1 - group['lr'] * wd)
        sgd.step()
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
        if momentum:
            assert all(torch.equal(opt.state[a]['momentum_buffer'], sgd.state[b]['momentum_buffer'])
                       for a, b in zip(ours[:2], theirs[:2]))
    assert not torch.equal(ours[0].detach(), start[0]) and torch.equal(ours[2].detach(), start[2])
    assert ours[2] not in opt.state and len(opt.state) == (2 if momentum else 0)


@pytest.mark.parametrize('fused', [False, True])  # unfused, GradScaler skips step(); fused, step() must skip itself
def test_sgdw_skips_decay_on_steps_gradscaler_skips(fused):
    lr, wd = 0.5, 0.1
    p, q = nn.Parameter(torch.ones(2, 3)), nn.Parameter(torch.ones(3))
    opt = SGDW([p], lr=lr, momentum=0.9, weight_decay=wd, fused=fused)
    opt.add_param_group(dict(params=[q], weight_decay=2 * wd))  # its own decoupled decay
    assert [g['decoupled_weight_decay'] for g in opt.param_groups] == [wd, 2 * wd]
    assert [g['weight_decay'] for g in opt.param_groups] == [0.0, 0.0]  # never SGD's coupled decay
    scaler = torch.amp.GradScaler('cpu', init_scale=4.0)

    def step(p_grad, q_grad):  # gradients that backward() leaves, scaled
        scaler.scale((p * p_grad).sum() + (q * q_grad).sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()

    step(float('inf'), 1.0)
    assert scaler.get_scale() == 2.0  # the step was skipped...
    assert torch.equal(p.detach(), torch.ones(2, 3)) and torch.equal(q.detach(), torch.ones(3))  # ...decay included
    step(0.0, 0.0)  # a finite step: each group decays by its own lr * wd
    torch.testing.assert_close(p.detach(), torch.full((2, 3), 1 - lr * wd), rtol=0, atol=1e-7)
    torch.testing.assert_close(q.detach(), torch.full((3,), 1 - lr * 2 * wd), rtol=0, atol=1e-7)


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgdw_fast_path_gives_the_lesson_paths_weights(nesterov):
    """The fused kernels (fused=True, train.py's choice on CUDA) and the plain update rule of SGDW.step
    agree step for step, with decay, momentum and a weight that gets no gradient."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 7, generator=g), torch.randn(7, generator=g), torch.randn(3, generator=g)]
    grads = [[torch.randn_like(p) for p in start[:2]] for _ in range(4)]
    weights = {}
    for fused in (False, True):
        params = [nn.Parameter(p.clone()) for p in start]
        opt = SGDW([dict(params=params[:1], weight_decay=0.1), dict(params=params[1:], weight_decay=0.0)],
                   lr=0.3, momentum=0.9, nesterov=nesterov, fused=fused)
        for step_grads in grads:
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            opt.step()
        weights[fused] = [p.detach() for p in params]
    for a, b in zip(weights[False], weights[True]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert torch.equal(weights[True][2], start[2])  # no gradient: no decay, no update


def test_fused_sgdw_allocates_nothing_per_step(monkeypatch):
    p = nn.Parameter(torch.randn(4, 4))
    opt = SGDW([p], lr=0.1, momentum=0.9, weight_decay=0.1, fused=True)
    p.grad = torch.randn(4, 4)
    opt.step()  # creates the momentum buffer
    created = []
    real = torch.zeros_like
    monkeypatch.setattr(torch, 'zeros_like', lambda *a, **k: created.append(1) or real(*a, **k))
    buffer = opt.state[p]['momentum_buffer']
    for _ in range(3):
        opt.step()
    assert not created and opt.state[p]['momentum_buffer'] is buffer


def test_msgdw_state_is_half_of_adamw():
    state_bytes, param_bytes = {}, None
    for name in ('msgdw', 'adamw'):
        model = make('gpt', preset='dnt')
        opt = model.configure_optimizers(name, 0.1, 0.1)
        model(*batch(model))[1].backward()
        opt.step()
        params = list(model.parameters())
        param_bytes = sum(p.numel() * p.element_size() for p in params)
        assert len(opt.state) == len(params)
        keys = {k for st in opt.state.values() for k in st}
        assert keys == ({'momentum_buffer'} if name == 'msgdw' else {'step', 'exp_avg', 'exp_avg_sq'})
        # bytes of the per-element buffers; AdamW's 'step' is one scalar counter per tensor
        if name == 'adamw':
            assert all(st['step'].numel() == 1 for st in opt.state.values())
        state_bytes[name] = sum(t.numel() * t.element_size() for st in opt.state.values()
                                for k, t in st.items() if k != 'step')
    assert state_bytes['msgdw'] == param_bytes
    assert 2 * state_bytes['msgdw'] == state_bytes['adamw']


@pytest.mark.parametrize('kind', ['gpt', 'vit-cls'])
def test_muon_takes_the_blocks_matrices(kind):
    model = make(kind, preset='dnt', bias=True)
    lr, wd = 0.02, 0.1
    opt = model.configure_optimizers('muon', lr, wd)
    muon, adamw = opt.optimizers
    assert type(muon) is torch.optim.Muon and type(adamw) is torch.optim.AdamW
    hidden = [p for p in model.transformer.h.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if all(p is not h for h in hidden)]
    assert sorted(param_ids(muon.param_groups[0]['params'])) == sorted(param_ids(hidden))
    decay, no_decay = adamw.param_groups
    assert sorted(param_ids(decay['params'])) == sorted(param_ids([p for p in rest if p.dim() >= 2]))
    assert sorted(param_ids(no_decay['params'])) == sorted(param_ids([p for p in rest if p.dim() < 2]))
    assert {id(p) for p in decay['params']} >= {id(model.transformer.wpe.weight)}  # embeddings stay with AdamW
    assert (muon.param_groups[0]['weight_decay'], decay['weight_decay'], no_decay['weight_decay']) == (wd, wd, 0.0)
    assert opt.param_groups == [*muon.param_groups, *adamw.param_groups]  # train.py's schedule reaches both
    # one step: the hidden matrices get Muon's orthogonalized update, whose RMS is scaled to AdamW's (0.2)
    before = [p.detach().clone() for p in hidden]
    model(*batch(model, b=32))[1].backward()  # enough samples for full-rank gradients
    opt.step()
    for p, p0 in zip(hidden, before):
        update = (p0 * (1 - lr * wd) - p.detach()) / lr
        rms = update.pow(2).mean().sqrt().item()
        assert 0.1 < rms < 0.3, rms
    state = opt.state_dict()
    fresh = make(kind, preset='dnt', bias=True).configure_optimizers('muon', lr, wd)
    fresh.load_state_dict(state)
    assert len(fresh.state) == len(opt.state) == len(list(model.parameters()))


def test_muon_state_is_half_of_adamw_on_its_matrices():
    model = make('gpt', preset='dnt')
    opt = model.configure_optimizers('muon', 0.02, 0.1)
    model(*batch(model))[1].backward()
    opt.step()
    muon, adamw = opt.optimizers
    assert {k for st in muon.state.values() for k in st} == {'momentum_buffer'}
    assert {k for st in adamw.state.values() for k in st} == {'step', 'exp_avg', 'exp_avg_sq'}


@pytest.mark.parametrize('preset', ['standard', 'dnt'])
def test_init_follows_nanogpt(preset):
    """nanoGPT's rule: normal(0, 0.02); c_proj normal(0, 0.02 / sqrt(2 n_layer)) in the standard model."""
    n_layer = 4
    model = M.GPT(M.GPTConfig(n_layer=n_layer, n_head=4, n_embd=256, block_size=256, vocab_size=512, preset=preset, bias=True))
    proj_std = 0.02 / math.sqrt(2 * n_layer) if preset == 'standard' else 0.02
    for name, p in model.named_parameters():
        if name.endswith('bias'):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif p.dim() == 2:
            std = proj_std if name.endswith('c_proj.weight') else 0.02
            assert abs(p.mean().item()) < 0.05 * std, name
            assert p.std().item() == pytest.approx(std, rel=0.02), name
            # untruncated: a normal's 3-sigma tail holds 0.27% of the entries, a cut at 2 sigma none
            assert (p.abs() > 3 * std).float().mean().item() == pytest.approx(0.0027, rel=0.3), name
        else:
            assert torch.equal(p, torch.ones_like(p)), name  # norm gains


# ----------------------------------------------------------------------------------------
# generate and crop_block_size

@pytest.fixture(scope='module')
def gpt_model():
    return make('gpt', preset='dnt').eval()


def test_generate_top1_is_greedy(gpt_model):
    prompt = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(0))
    out = gpt_model.generate(prompt, max_new_tokens=20, top_k=1)  # 23 > block_size 16: crops too
    idx = prompt
    with torch.no_grad():
        for _ in range(20):
            logits, _ = gpt_model(idx[:, -gpt_model.config.block_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert out.shape == (2, 23)
    assert torch.equal(out, idx)


def test_generate_seeded_sampling(gpt_model):
    prompt = torch.zeros(1, 2, dtype=torch.long)

    def sample(seed):
        torch.manual_seed(seed)
        return gpt_model.generate(prompt, max_new_tokens=30, temperature=5.0)

    a, b, c = sample(1), sample(1), sample(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # 30 nearly uniform draws out of 50 tokens
    assert torch.equal(a[:, :2], prompt)


def test_generate_temperature(gpt_model):
    prompt = torch.randint(0, 50, (4, 3), generator=torch.Generator().manual_seed(0))
    greedy = gpt_model.generate(prompt, max_new_tokens=10, top_k=1)
    torch.manual_seed(0)
    cold = gpt_model.generate(prompt, max_new_tokens=10, temperature=1e-6)  # ~ one-hot: greedy
    torch.manual_seed(0)
    hot = gpt_model.generate(prompt, max_new_tokens=10, temperature=1.0)  # near-uniform at init
    assert torch.equal(cold, greedy)
    assert not torch.equal(hot, greedy)


def test_generate_top_k_restricts_sampling(gpt_model):
    prompt = torch.randint(0, 50, (64, 4), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    out = gpt_model.generate(prompt, max_new_tokens=1, temperature=10.0, top_k=3)
    with torch.no_grad():
        top3 = gpt_model(prompt)[0][:, -1].topk(3).indices
    assert (out[:, -1:] == top3).any(dim=1).all()
    assert out[:, -1].unique().numel() > 3  # differs between prompts: not a constant


def test_generate_prompt_longer_than_block(gpt_model):
    prompt = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(0))
    kept = prompt.clone()
    torch.manual_seed(0)
    out = gpt_model.generate(prompt, max_new_tokens=5)
    assert out.shape == (2, 25)
    assert torch.equal(out[:, :20], kept) and torch.equal(prompt, kept)
    assert ((out >= 0) & (out < 50)).all()


def test_crop_block_size():
    model = make('gpt').eval()
    idx, y = batch(model)
    idx, y = idx[:, :8].contiguous(), y[:, :8].contiguous()
    with torch.no_grad():
        full, _ = model(idx, y)
    wpe = model.transformer.wpe.weight.detach().clone()
    model.crop_block_size(8)
    assert model.config.block_size == 8
    assert model.transformer.wpe.weight.shape == (8, C)
    assert torch.equal(model.transformer.wpe.weight.detach(), wpe[:8])
    logits, loss = model(idx, y)
    assert logits.shape == (2, 8, 50)
    torch.testing.assert_close(logits, full)  # positions 0..7 unchanged by the crop
    loss.backward()
    assert model.transformer.wpe.weight.grad.shape == (8, C)
    with pytest.raises(AssertionError):
        model(torch.zeros(2, 9, dtype=torch.long))
    assert model.generate(idx[:, :3], 10, top_k=1).shape == (2, 13)


def test_crop_block_size_updates_flops_per_sample():
    cropped, fresh = make('gpt'), make('gpt', block_size=8)
    cropped.crop_block_size(8)
    assert cropped.get_num_params() == fresh.get_num_params()
    n_pos = cropped.transformer.wpe.num_embeddings
    assert n_pos == 8, (
        'crop_block_size swaps wpe.weight but leaves wpe.num_embeddings at the old block_size, '
        'and flops_per_sample reads its T from there')
    assert cropped.flops_per_sample() == fresh.flops_per_sample()


# ----------------------------------------------------------------------------------------
# bad configs, MFU

@pytest.mark.parametrize('cls, kw, match', [
    (M.GPTConfig, dict(n_embd=30, n_head=4), 'divisible by n_head'),
    (M.ViTConfig, dict(n_embd=30, n_head=4), 'divisible by n_head'),
    (M.ViTConfig, dict(image_size=10, patch_size=4), 'divisible by patch_size'),
    (M.GPTConfig, dict(norm='batchnorm'), 'unknown norm'),
    (M.ViTConfig, dict(norm='layer_norm'), 'unknown norm'),
    (M.GPTConfig, dict(preset='s6'), 'unknown preset'),
    (M.ViTConfig, dict(preset='DNT'), 'unknown preset'),
    (M.ViTConfig, dict(pool='max'), 'unknown pool'),
    (M.GPTConfig, dict(n_head=0), 'n_head must be at least 1'),
    (M.GPTConfig, dict(n_layer=-1), 'n_layer must be at least 1'),
    (M.GPTConfig, dict(block_size=0), 'block_size must be at least 1'),
    (M.ViTConfig, dict(patch_size=0), 'patch_size must be at least 1'),
    (M.GPTConfig, dict(dropout=1.0), r'dropout must be in \[0, 1\)'),
])
def test_bad_config_raises(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


@pytest.mark.parametrize('kind', KINDS)
def test_flops_and_mfu_on_cpu(kind, monkeypatch):
    model = make(kind)
    cfg = model.config
    T = cfg.block_size if kind == 'gpt' else (cfg.image_size // cfg.patch_size) ** 2 + (cfg.pool == 'cls')
    flops = model.flops_per_sample()
    assert flops > 0
    assert flops == 6 * model.get_num_params() * T + 12 * cfg.n_layer * cfg.n_embd * T * T  # nanoGPT / PaLM
    assert model.estimate_mfu(8, 0.5) is None  # a CPU model: no known peak
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'NVIDIA H100 80GB HBM3')
    assert model.estimate_mfu(8, 0.5) is None  # even where a GPU exists: the model is not on it


@pytest.mark.cuda
def test_mfu_peak_lookup_on_cuda(monkeypatch):
    model = make('gpt').cuda()
    flops = model.flops_per_sample()
    for name, peak in [('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12), ('NVIDIA A100-SXM4-40GB', 312e12)]:
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a, name=name: name)
        assert model.estimate_mfu(8, 0.5) == pytest.approx(flops * 8 / 0.5 / peak)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'Some Unknown GPU')
    assert model.estimate_mfu(8, 0.5) is None


# ----------------------------------------------------------------------------------------
# GPT-2 weights: a randomly initialised GPT2LMHeadModel saved here stands in for OpenAI's (no download)

@pytest.fixture(scope='module')
def gpt2_dir(tmp_path_factory):
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=61, bos_token_id=0,
                                     eos_token_id=0, activation_function='gelu')  # exact GELU as here; GPT-2's is tanh-approximated
    hf = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # biases and gains away from 0 and 1, so that a misplaced one shows
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp('gpt2')
    hf.save_pretrained(path)
    return str(path), hf.eval()


def test_from_pretrained_matches_gpt2lmheadmodel(gpt2_dir):
    path, hf = gpt2_dir
    model = M.GPT.from_pretrained(path).eval()
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (2, 2, 32, 24, 61)
    assert cfg.bias and cfg.preset == 'standard' and cfg.dropout == 0.0
    assert_nanogpt_state_dict(model)
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.randint(0, 61, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(idx, idx)  # with targets: the logits of every position
        expected = hf(idx).logits
    assert logits.abs().max() > 0.1  # not trivially small
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert M.GPT.from_pretrained(path, dropout=0.1).config.dropout == 0.1


@pytest.mark.parametrize('norms, named', [(dict(preset='dnt'), "preset 'dnt'"), (dict(norm='rmsnorm'), "norm='rmsnorm'"),
                                          (dict(preset='standard', qk_norm=True), 'qk_norm=True')])
def test_from_pretrained_refuses_other_norms(norms, named):
    # refused before anything is imported or downloaded
    with pytest.raises(ValueError, match="standard preset only") as e:
        M.GPT.from_pretrained('gpt2', **norms)
    assert named in str(e.value) and '\n' not in str(e.value)


def test_from_pretrained_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown pretrained model 'gpt3'"):
        M.GPT.from_pretrained('gpt3')
    if importlib.util.find_spec('transformers'):  # a directory without a saved model: one line, whatever transformers raised
        with pytest.raises(OSError, match=r"^cannot load .*\(\w+: ") as e:
            M.GPT.from_pretrained(str(tmp_path))
        assert '\n' not in str(e.value)
    monkeypatch.setitem(sys.modules, 'transformers', None)  # what an uninstalled package looks like to import
    with pytest.raises(ImportError, match=r"pip install transformers"):
        M.GPT.from_pretrained(str(tmp_path))


# ----------------------------------------------------------------------------------------
# stochastic depth

def test_drop_path_drops_whole_samples_at_its_rate():
    drop = M.DropPath(0.3)
    x = torch.randn(20000, 3, 4)
    torch.manual_seed(0)
    y = drop(x)
    kept = (y != 0).all(dim=(1, 2))
    assert ((y == 0).all(dim=(1, 2)) | kept).all()  # a sample is dropped whole or kept whole
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.015)
    torch.testing.assert_close(y[kept], x[kept] / 0.7)  # the expected output is the input
    assert drop.eval()(x) is x


@pytest.mark.parametrize('n_layer, expected', [(4, [0.0, 0.1, 0.2, 0.3]), (2, [0.0, 0.3]), (1, [0.3])])
def test_drop_path_is_the_last_blocks_rate(n_layer, expected):
    """drop_path is the rate of the last block, the only one when there is one, with 0 at the first of several."""
    model = make('gpt', preset='dnt', n_layer=n_layer, drop_path=0.3)
    assert [getattr(b.drop_path, 'rate', 0.0) for b in model.transformer.h] == pytest.approx(expected)


def test_drop_path_rises_linearly_with_depth_and_is_identity_when_off():
    model = make('gpt', preset='dnt', n_layer=4, drop_path=0.3)
    rates = [getattr(b.drop_path, 'rate', 0.0) for b in model.transformer.h]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert isinstance(model.transformer.h[0].drop_path, nn.Identity)
    plain = make('gpt', preset='dnt', n_layer=4)
    assert all(isinstance(b.drop_path, nn.Identity) for b in plain.transformer.h)
    assert model.state_dict().keys() == plain.state_dict().keys()  # no weights: a checkpoint fits either
    plain.load_state_dict(model.state_dict())
    x, _ = batch(model)
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x)[0], plain(x)[0], rtol=0, atol=0)  # a no-op at eval


@pytest.mark.parametrize('preset', ['dnt', 'standard'])
def test_drop_path_drops_the_whole_normalized_branch(preset):
    """Each sample's output is one of four: both branches dropped, either one, or neither; a kept branch is
    the whole sub-block output, MidNorm included, scaled by 1 / (1 - rate)."""
    rate, B = 0.5, 4000
    config = M.GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32, preset=preset, drop_path=rate)
    block = M.Block(config, causal=True, drop_path=rate)
    x = torch.randn(1, 8, 16).expand(B, 8, 16)
    with torch.no_grad():
        attn = lambda h: block.ln_mid_1(block.attn(block.ln_1(h))) / (1 - rate)
        mlp = lambda h: block.ln_mid_2(block.mlp(block.ln_2(h))) / (1 - rate)
        x0 = x[:1]
        cases = torch.cat([x0, x0 + attn(x0), x0 + mlp(x0), x0 + attn(x0) + mlp(x0 + attn(x0))])  # (4, T, C)
        torch.manual_seed(0)
        y = block(x)
    distance = (y[:, None] - cases[None]).abs().amax(dim=(2, 3))  # (B, 4)
    assert (distance.min(1).values < 1e-5).all()
    counts = torch.bincount(distance.argmin(1), minlength=4).float() / B
    torch.testing.assert_close(counts, torch.full((4,), 0.25), atol=0.03, rtol=0)
