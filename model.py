"""
DNT, the Deeply Normalized Transformer (Qi et al., arXiv 2507.17501), as a GPT and a ViT
that share one Block. Every normalization position is a config switch; a position that is
off is nn.Identity(), so the standard GPT-2 / ViT and every ablation run the same code.

    x = InputNorm(embedding)                                   -> ln_in (input_norm)
    for each block:
        x = x + MidNorm(Attn_with_QKNorm(PreNorm(x)))          -> ln_1, attn.q_norm/k_norm (qk_norm), ln_mid_1 (mid_norm)
        x = x + MidNorm(MLP([PreNorm](x)))                     -> ln_2 (mlp_prenorm), ln_mid_2 (mid_norm)
    logits = head(FinalNorm(x))                                -> ln_f (final_norm)

What each norm removes from the Jacobians (a norm's Jacobian scales as 1/||input||):
- InputNorm: the scale of the embedding x0, which the residual stream carries into every later norm.
- PreNorm: the token norms of the residual stream from the attention Jacobian (and W_q, W_k, W_v grads).
- QKNorm: the magnitudes of W_q and W_k from the attention logits and their gradients.
- MidNorm: the magnitudes of W_v, W_o and W_2 (the sub-block is linear in each, without biases). Not W_1 (mlp.c_fc):
  GELU is not homogeneous. With RMSNorm, exact up to rounding; LayerNorm's eps makes it approximate for small inputs.
Those weights' scale sets only their effective step (lr / ||W||^2), which decoupled weight decay bounds:
momentum SGD (mSGDW, optim.py) trains them with one global lr.
"""
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from devices import fused_kernels, peak_flops
from optim import Lion, MuonAdamW, SGDW

# the paper's ablation S1..S5; 'standard' is the GPT-2 / ViT pre-norm model, 'dnt' is S5
PRESETS = {
    's1': dict(input_norm=False, mlp_prenorm=True, qk_norm=False, mid_norm=False),
    's2': dict(input_norm=False, mlp_prenorm=True, qk_norm=True, mid_norm=False),
    's3': dict(input_norm=True, mlp_prenorm=True, qk_norm=True, mid_norm=False),
    's4': dict(input_norm=True, mlp_prenorm=True, qk_norm=True, mid_norm=True),
    's5': dict(input_norm=True, mlp_prenorm=False, qk_norm=True, mid_norm=True),
}
PRESETS['standard'], PRESETS['dnt'] = PRESETS['s1'], PRESETS['s5']
NORMS = ('layernorm', 'rmsnorm')
GPT2_MODELS = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')  # OpenAI's weights on the Hugging Face hub

# ----------------------------------------------------------------------------------------
# configs, and what their fields may be (checked by TransformerConfig.__post_init__)

COUNTS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size', 'image_size', 'patch_size', 'in_chans',
          'num_classes')  # at least 1
RATES = ('dropout', 'drop_path')  # in [0, 1)
CHOICES = dict(preset=tuple(PRESETS), norm=NORMS, pool=('cls', 'mean'))

@dataclass
class TransformerConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    drop_path: float = 0.0    # stochastic depth: the last block's rate, rising linearly from 0 at the first
    bias: bool = False        # bias in Linears and LayerNorms
    norm: str = 'layernorm'   # 'layernorm' or 'rmsnorm', used at every position
    preset: str = 'standard'  # fills each switch below that is left at None
    input_norm: bool = None
    mlp_prenorm: bool = None
    qk_norm: bool = None
    mid_norm: bool = None
    final_norm: bool = True

    def __post_init__(self):
        for name, value in vars(self).items():  # a subclass's fields too
            if name in COUNTS and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
            if name in RATES and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
            if name in CHOICES and value not in CHOICES[name]:
                raise ValueError(f"unknown {name} {value!r}; choose one of {CHOICES[name]}")
        for switch in (*PRESETS[self.preset], 'final_norm', 'bias'):  # the preset fills those left at None
            if getattr(self, switch) is None:
                setattr(self, switch, PRESETS[self.preset].get(switch))
            if not isinstance(getattr(self, switch), bool):
                raise ValueError(f"{switch} must be True or False, got {getattr(self, switch)!r}")
        for name, by in (('n_embd', 'n_head'), ('image_size', 'patch_size')):
            if name in vars(self) and getattr(self, name) % getattr(self, by):
                raise ValueError(f"{name} ({getattr(self, name)}) must be divisible by {by} ({getattr(self, by)})")

@dataclass
class GPTConfig(TransformerConfig):
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed

@dataclass
class ViTConfig(TransformerConfig):
    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    pool: str = 'cls'  # 'cls' token or 'mean' over patches

def norm_layer(config, dim, on=True):
    if not on:
        return nn.Identity()
    return nn.RMSNorm(dim) if config.norm == 'rmsnorm' else nn.LayerNorm(dim, bias=config.bias)

# ----------------------------------------------------------------------------------------
# the shared block

class SelfAttention(nn.Module):

    def __init__(self, config, causal):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.causal, self.dropout = causal, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # QKNorm: per head over head_dim, one gain shared by the heads; the 1/sqrt(head_dim) softmax scale is kept.
        # With norm='layernorm' it is mean-centred, unlike the paper's RMS formula (gain * q / rms(q)).
        self.q_norm = norm_layer(config, self.head_dim, config.qk_norm)
        self.k_norm = norm_layer(config, self.head_dim, config.qk_norm)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).unbind(dim=2)  # 3 x (B, T, nh, hs)
        q, k = self.q_norm(q), self.k_norm(k)  # normalized over hs before the transpose: no extra copy
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))  # (B, nh, T, hs) -> (B, T, C)

class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016, as in timm): dropout of whole samples of a residual branch."""

    def __init__(self, rate):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if not self.training:
            return x
        return x * F.dropout(x.new_ones(x.size(0), *(1,) * (x.dim() - 1)), self.rate)  # kept: scaled by 1 / (1 - rate)

class Block(nn.Module):

    def __init__(self, config, causal, drop_path=0.0):
        super().__init__()
        self.ln_1 = norm_layer(config, config.n_embd)
        self.attn = SelfAttention(config, causal)
        self.ln_mid_1 = norm_layer(config, config.n_embd, config.mid_norm)
        self.ln_2 = norm_layer(config, config.n_embd, config.mlp_prenorm)
        self.mlp = MLP(config)
        self.ln_mid_2 = norm_layer(config, config.n_embd, config.mid_norm)
        # the whole normalized sub-block output is dropped: MidNorm stays inside the branch
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.ln_mid_1(self.attn(self.ln_1(x))))
        x = x + self.drop_path(self.ln_mid_2(self.mlp(self.ln_2(x))))
        return x

# ----------------------------------------------------------------------------------------
# the models: an embedding, the shared trunk, a head

class Transformer(nn.Module):
    """What GPT and ViT share: InputNorm, the blocks, the final norm, init, optimizers, MFU."""

    def __init__(self, config, causal, embedding, n_pos):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            **embedding,
            wpe=nn.Embedding(n_pos, config.n_embd),
            ln_in=norm_layer(config, config.n_embd, config.input_norm),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, causal, config.drop_path * i / (config.n_layer - 1) if config.n_layer > 1
                                   else config.drop_path) for i in range(config.n_layer)]),
            ln_f=norm_layer(config, config.n_embd, config.final_norm),
        ))

    def init_weights(self):
        # nanoGPT's init, normal(0.02), with GPT-2's 1/sqrt(2 n_layer) shrink of the residual projections; under
        # MidNorm that shrink cancels in the forward pass and only enlarges their effective step: DNT keeps 0.02
        proj_std = 0.02 if self.config.mid_norm else 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
                torch.nn.init.normal_(module.weight, mean=0.0, std=proj_std if name.endswith('c_proj') else 0.02)
                if getattr(module, 'bias', None) is not None:
                    torch.nn.init.zeros_(module.bias)

    def trunk(self, x):
        x = self.transformer.drop(self.transformer.ln_in(x))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def get_num_params(self, non_embedding=True):
        """Parameter count; the tied head is counted once, position embeddings left out by default."""
        n_params = sum(p.numel() for p in self.parameters())
        return n_params - self.transformer.wpe.weight.numel() if non_embedding else n_params

    def configure_optimizers(self, optimizer, learning_rate, weight_decay, betas=(0.9, 0.95),
                             momentum=0.9, nesterov=False, device_type='cpu'):
        # decay every matrix (Linear, Embedding, Conv2d): it bounds the scale of the scale-invariant weights,
        # which sets their effective step; vectors (norm gains, biases, the cls token) are left alone
        params = [p for p in self.parameters() if p.requires_grad]
        fused = fused_kernels(device_type)  # one kernel for all tensors (CUDA)
        if optimizer == 'muon':  # the blocks' matrices to Muon, the rest (embeddings, head, vectors) to AdamW
            hidden = {id(p) for p in self.transformer.h.parameters() if p.dim() == 2}
            muon = [p for p in params if id(p) in hidden]
            params = [p for p in params if id(p) not in hidden]
        groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
                  dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
        if optimizer == 'adamw':
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)
        if optimizer == 'msgdw':
            return SGDW(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov, fused=fused)
        if optimizer == 'lion':
            return Lion(groups, lr=learning_rate, betas=betas, weight_decay=weight_decay)
        if optimizer == 'muon':
            return MuonAdamW(muon, groups, lr=learning_rate, weight_decay=weight_decay, betas=betas, fused=fused)
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'msgdw', 'adamw', 'lion' or 'muon'")

    def flops_per_sample(self):
        """Training FLOPs of one sequence (PaLM appendix B, as in nanoGPT)."""
        cfg, T = self.config, self.transformer.wpe.num_embeddings
        return 6 * self.get_num_params() * T + 12 * cfg.n_layer * cfg.n_embd * T * T

    def estimate_mfu(self, samples_per_iter, dt):
        """Model FLOPs utilization against the device's bf16 peak; None where the peak is unknown."""
        peak = peak_flops(next(self.parameters()).device)
        return None if peak is None else self.flops_per_sample() * samples_per_iter / dt / peak

class GPT(Transformer):

    def __init__(self, config):
        super().__init__(config, causal=True, embedding=dict(wte=nn.Embedding(config.vocab_size, config.n_embd)),
                         n_pos=config.block_size)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.init_weights()

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size, f"sequence of length {t} exceeds block_size {self.config.block_size}"
        pos = torch.arange(t, dtype=torch.long, device=idx.device)
        x = self.trunk(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (b, t, n_embd)
        if targets is None:  # inference: only the last position's logits
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to fine-tune with a shorter one."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        self.transformer.wpe.num_embeddings = block_size

    @classmethod
    def from_pretrained(cls, name, dropout=0.0, **norms):
        """OpenAI's GPT-2 weights (GPT2_MODELS, or a saved GPT2LMHeadModel's directory) in the standard preset,
        the only one they fit: `norms` may not ask for DNT's extra norms. Needs transformers. As in nanoGPT,
        the MLP uses the exact GELU where GPT-2 used its tanh approximation."""
        if name not in GPT2_MODELS and not os.path.isdir(name):
            raise ValueError(f"unknown pretrained model {name!r}; choose one of {', '.join(GPT2_MODELS)} "
                             "or a directory saved by transformers' GPT2LMHeadModel.save_pretrained")
        config, standard = GPTConfig(**norms), GPTConfig(preset='standard')  # resolved: every switch can be compared
        differ = [k for k in ('norm', *PRESETS['standard'], 'final_norm') if getattr(config, k) != getattr(standard, k)]
        if differ:
            raise ValueError(f"GPT-2's weights fit the standard preset only; preset {config.preset!r} with "
                             + ', '.join(f"{k}={getattr(config, k)!r}" for k in differ)
                             + " has norms GPT-2 has no weights for: use preset='standard'")
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("GPT-2's weights need Hugging Face transformers: pip install transformers") from None
        try:
            hf = GPT2LMHeadModel.from_pretrained(name)
        except Exception as e:  # hub, network and file errors come in many classes; one line for the caller
            raise OSError(f"cannot load {name} ({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
        c = hf.config
        model = cls(GPTConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.n_positions,
                              vocab_size=c.vocab_size, bias=True, dropout=dropout, preset='standard'))
        # our keys, less older transformers' causal-mask buffers; Conv1D stores (in, out), nn.Linear (out, in)
        conv1d = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
        model.load_state_dict({k: v.t() if k.endswith(conv1d) else v for k, v in hf.state_dict().items()
                               if not k.endswith(('.attn.bias', '.attn.masked_bias'))})
        return model

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Extend idx (b, t) by max_new_tokens sampled tokens; top_k=1 is greedy decoding."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])  # the context cropped to block_size
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('inf')
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

class ViT(Transformer):

    def __init__(self, config):
        patch = nn.Conv2d(config.in_chans, config.n_embd, config.patch_size, stride=config.patch_size, bias=config.bias)
        super().__init__(config, causal=False, embedding=dict(patch=patch),
                         n_pos=(config.image_size // config.patch_size) ** 2 + (config.pool == 'cls'))
        # a vector, not a (1, 1, C) tensor, so that like other vectors it gets no weight decay
        self.cls_token = nn.Parameter(torch.zeros(config.n_embd)) if config.pool == 'cls' else None
        self.head = nn.Linear(config.n_embd, config.num_classes, bias=True)
        self.init_weights()

    def forward(self, img, targets=None, label_smoothing=0.0):
        x = self.transformer.patch(img).flatten(2).transpose(1, 2)  # (B, C, H/p, W/p) -> (B, N, C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.size(0), 1, -1), x], dim=1)  # (B, 1 + N, C)
        x = self.trunk(x + self.transformer.wpe.weight)
        logits = self.head(x[:, 0] if self.config.pool == 'cls' else x.mean(dim=1))  # (B, num_classes)
        loss = None if targets is None else F.cross_entropy(logits, targets, ignore_index=-1, label_smoothing=label_smoothing)
        return logits, loss
