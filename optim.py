"""
The optimizers of configure_optimizers (model.py): SGDW, the paper's mSGDW; Lion and MuonAdamW for
comparison (neither is in the paper). AdamW is torch's own. And EMA, the moving average of the weights.
"""
import copy

import torch


class SGDW(torch.optim.SGD):
    """Momentum SGD with decoupled weight decay (mSGDW), the paper's optimizer. Each step, for a weight p
    with gradient g, step() runs three lines:

        p <- p * (1 - lr * wd)    decoupled decay: shrinks p whatever g is (the "W" of AdamW)
        b <- momentum * b + g     the momentum buffer (b = g on the first step)
        p <- p - lr * b           (nesterov: p <- p - lr * (g + momentum * b))

    One buffer per weight, where AdamW keeps two. After the decay, step() does what torch's SGD does on the
    CPU, operation for operation, so the weights match it bit for bit; the state ('momentum_buffer') and the
    groups are SGD's too, shared with the fused kernels of the fast path. SGD's own weight_decay adds wd * p
    to g (coupled), so it stays 0: each group's weight_decay is moved to 'decoupled_weight_decay'."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, nesterov=False, fused=None):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, fused=fused)

    def add_param_group(self, param_group):  # __init__ adds its groups through here too
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group['decoupled_weight_decay'], group['weight_decay'] = group['weight_decay'], 0.0

    @torch.no_grad()
    def step(self):
        if self.defaults['fused']:
            return self.fused_step()
        for group in self.param_groups:
            lr, wd, momentum = group['lr'], group['decoupled_weight_decay'], group['momentum']
            for p in group['params']:
                if p.grad is None:  # like SGD: a weight without a gradient is not touched, not even decayed
                    continue
                g = p.grad
                p.mul_(1 - lr * wd)  # decoupled decay
                if momentum:
                    b = self.state[p].get('momentum_buffer')
                    if b is None:
                        b = self.state[p]['momentum_buffer'] = g.clone()  # b = g on the first step
                    else:
                        b.mul_(momentum).add_(g)
                    g = g.add(b, alpha=momentum) if group['nesterov'] else b
                p.add_(g, alpha=-lr)  # the step

    # ----------------------------------------------------------------------------------------
    # fast path: torch's fused kernels (CUDA), one launch per group for the update of step()

    def fused_step(self):
        # GradScaler calls a fused optimizer's step even on a step it skips, with found_inf = 1 (a device
        # tensor, read without a sync): the decay must skip with it.
        skip = getattr(self, 'found_inf', None)
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if group['momentum']:
                # fused SGD leaves a new buffer uninitialized (torch.empty) when its first step is skipped;
                # a zero buffer gives the same first step (0 * momentum + g)
                for p in params:
                    if 'momentum_buffer' not in self.state[p]:
                        self.state[p]['momentum_buffer'] = torch.zeros_like(p)
            decay = group['lr'] * group['decoupled_weight_decay']
            if params and decay:
                torch._foreach_mul_(params, 1 - decay if skip is None else 1 - decay * (1 - skip))
        return super().step()  # the momentum and step lines, in SGD's fused kernel


class MuonAdamW:
    """A comparison, not in the paper. torch.optim.Muon (momentum 0.95, Nesterov) on `muon_params`, AdamW on
    `adamw_groups`, as one optimizer: the split of Keller Jordan's Muon and modded-nanogpt. Muon's update is
    rescaled to AdamW's RMS (Moonshot, "Muon is Scalable for LLM Training", 2025), so both halves share one
    learning rate and weight decay."""

    def __init__(self, muon_params, adamw_groups, lr, weight_decay, betas, fused=False):
        self.optimizers = [torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, adjust_lr_fn='match_rms_adamw'),
                           torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, fused=fused)]

    @property
    def param_groups(self):  # read anew: load_state_dict replaces the groups
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self):
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return dict(muon=self.optimizers[0].state_dict(), adamw=self.optimizers[1].state_dict())

    def load_state_dict(self, state_dict):
        self.optimizers[0].load_state_dict(state_dict['muon'])
        self.optimizers[1].load_state_dict(state_dict['adamw'])


class Lion(torch.optim.Optimizer):
    """A comparison, not in the paper. Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023):
    like mSGDW, one buffer per weight, but every entry of the step has the same size. Each step, for a weight p
    with gradient g:

        p <- p * (1 - lr * wd)                          decoupled decay
        p <- p - lr * sign(beta1 * m + (1 - beta1) * g)  the step: the sign of an interpolation
        m <- beta2 * m + (1 - beta2) * g                 the buffer (m = 0 before the first step)

    A sign step is larger than AdamW's, so Lion takes a smaller lr and a larger wd (the paper: 3-10x each)."""

    def __init__(self, params, lr, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group['betas']
            for p in group['params']:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault('exp_avg', torch.zeros_like(p))
                p.mul_(1 - group['lr'] * group['weight_decay'])
                p.add_(torch.sign(m.lerp(p.grad, 1 - beta1)), alpha=-group['lr'])
                m.lerp_(p.grad, 1 - beta2)


class EMA(torch.nn.Module):
    """An exponential moving average of a model's weights, evaluated beside them (not an optimizer: it reads the
    weights after each step). The first update copies them; each later one is ema <- decay * ema + (1 - decay) *
    weights, one lerp over all tensors. The count of updates stays on the host, so that no update waits for the
    device. Its state_dict is torch's AveragedModel's: module.* and n_averaged."""

    def __init__(self, model, decay):
        super().__init__()
        self.module, self.decay = copy.deepcopy(model), decay
        self.register_buffer('n_averaged', torch.tensor(0, dtype=torch.long))  # on the CPU: read without a sync

    @torch.no_grad()
    def update_parameters(self, model):
        ema, weights = list(self.module.parameters()), [p.detach() for p in model.parameters()]
        if self.n_averaged == 0:
            torch._foreach_copy_(ema, weights)
        else:
            torch._foreach_lerp_(ema, weights, 1 - self.decay)
        self.n_averaged += 1
