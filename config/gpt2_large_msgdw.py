# Standard GPT-2 large (774M) with mSGDW: the cell the paper says falls behind (the paper: 2.544 val loss).
# OpenWebText; all but the preset and the optimizer as in dnt_gpt2_large.py, whose header gives the batch and command.
wandb_run_name = 'gpt2_large_msgdw'
out_dir = 'out/gpt2_large_msgdw'
dataset = 'openwebtext'
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
preset = 'standard'
n_layer, n_head, n_embd = 36, 20, 1280  # GPT-2 large
batch_size, block_size, gradient_accumulation_steps = 6, 1024, 80
max_iters = lr_decay_iters = 100000
warmup_iters = 2000
eval_interval, eval_iters, log_interval = 1000, 200, 10
opt = 'msgdw'
learning_rate, min_lr = 1.0, 0.1  # not given by the paper at this size: its 124M lr, kept (its lrs were barely tuned)
momentum = 0.9
# not given by the paper: decoupled p <- p * (1 - lr * wd); lr * wd = 1e-4 per step at peak, as at 124M
weight_decay = 1e-4
grad_clip = 1.0
