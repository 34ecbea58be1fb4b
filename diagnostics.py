"""
Gradient statistics, the paper's Figure 1: how heavy-tailed |g| is, per weight matrix. train.py logs
them every grad_stats_interval iterations into log.jsonl; reproduce.py plots them.
"""
import torch

GRAD_KINDS = {'c_attn': 'attn_qkv', 'attn.c_proj': 'attn_out', 'c_fc': 'mlp_in', 'mlp.c_proj': 'mlp_out',
              'wte': 'embed', 'wpe': 'embed', 'patch': 'embed', 'head': 'head'}
GRAD_BIN_EDGES = torch.logspace(-12, 0, 49)  # 4 bins a decade; below and above go to the end bins


def grad_stats(model):
    """Histogram of |g| per kind of weight and pooled, and per-tensor tail statistics of the gradients
    that backward() left in `model`. Statistics use the nonzero entries: rows of tokens absent from
    the batch get exactly zero."""
    hist, tensors = {}, {}
    for name, p in model.named_parameters():
        if p.grad is None or p.dim() < 2:
            continue
        g = p.grad.detach().float().flatten()
        g = g[g != 0]
        if g.numel() == 0:
            continue
        a = g.abs().sort().values
        quantile = lambda q: a[min(int(q * a.numel()), a.numel() - 1)].item()
        centered = g - g.mean()
        kind = next((v for k, v in GRAD_KINDS.items() if k in name), 'other')
        stats = dict(kind=kind, median=quantile(0.5), p99=quantile(0.99), p999=quantile(0.999), max=a[-1].item(),
                     kurtosis=((centered ** 4).mean() / (centered ** 2).mean() ** 2).item())
        stats['p999_over_median'] = stats['p999'] / stats['median']
        tensors[name] = stats
        counts = torch.bucketize(a, GRAD_BIN_EDGES.to(a.device)).bincount(minlength=len(GRAD_BIN_EDGES) + 1)
        for key in (kind, 'all'):
            hist[key] = hist.get(key, 0) + counts
    return dict(bin_edges=GRAD_BIN_EDGES.tolist(), hist={k: v.tolist() for k, v in hist.items()}, tensors=tensors)
