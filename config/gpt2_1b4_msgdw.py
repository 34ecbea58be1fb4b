# A standard GPT of 1.4B with mSGDW: the cell the paper says falls behind (the paper: 2.472 val loss).
# OpenWebText; all but the preset and the optimizer as in dnt_gpt2_1b4.py, whose header gives the shape, batch and command.
wandb_run_name = 'gpt2_1b4_msgdw'
out_dir = 'out/gpt2_1b4_msgdw'
dataset = 'openwebtext'
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
preset = 'standard'
n_layer, n_head, n_embd = 48, 24, 1536  # a guess, the one that fits: see dnt_gpt2_1b4.py
batch_size, block_size, gradient_accumulation_steps = 4, 1024, 120  # 480 x 1024 tokens, as at 124M
max_iters = lr_decay_iters = 100000
warmup_iters = 2000
eval_interval, eval_iters, log_interval = 1000, 200, 10
opt = 'msgdw'
learning_rate, min_lr = 1.0, 0.1  # not given by the paper at this size: its 124M lr, kept (its lrs were barely tuned)
momentum = 0.9
# not given by the paper: decoupled p <- p * (1 - lr * wd); lr * wd = 1e-4 per step at peak, as at 124M
weight_decay = 1e-4
grad_clip = 1.0
