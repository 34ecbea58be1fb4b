# The paper's baseline at 774M: standard GPT-2 large (pre-norm, as nanoGPT) with AdamW (the paper: 2.492 val loss).
# OpenWebText; all but the preset and the optimizer as in dnt_gpt2_large.py, whose header gives the batch and command.
wandb_run_name = 'gpt2_large_adamw'
out_dir = 'out/gpt2_large_adamw'
dataset = 'openwebtext'
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
preset = 'standard'
n_layer, n_head, n_embd = 36, 20, 1280  # GPT-2 large
batch_size, block_size, gradient_accumulation_steps = 6, 1024, 80
max_iters = lr_decay_iters = 100000
warmup_iters = 2000
eval_interval, eval_iters, log_interval = 1000, 200, 10
opt = 'adamw'
# not given by the paper at this size: its 124M lr, kept (its lrs were barely tuned); Sophia's AdamW baseline for
# GPT-2 large used 2e-4
learning_rate, min_lr = 6e-4, 6e-5
beta1, beta2 = 0.9, 0.95
weight_decay = 0.1
grad_clip = 1.0
