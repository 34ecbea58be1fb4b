# DNT GPT of 1.4B with AdamW (the paper: 2.396 val loss).
# OpenWebText; all but the preset and the optimizer as in dnt_gpt2_1b4.py, whose header gives the shape, batch and command.
wandb_run_name = 'dnt_gpt2_1b4_adamw'
out_dir = 'out/dnt_gpt2_1b4_adamw'
dataset = 'openwebtext'
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
preset = 'dnt'
n_layer, n_head, n_embd = 48, 24, 1536  # a guess, the one that fits: see dnt_gpt2_1b4.py
batch_size, block_size, gradient_accumulation_steps = 4, 1024, 120  # 480 x 1024 tokens, as at 124M
max_iters = lr_decay_iters = 100000
warmup_iters = 2000
eval_interval, eval_iters, log_interval = 1000, 200, 10
opt = 'adamw'
learning_rate, min_lr = 6e-4, 6e-5  # not given by the paper at this size: its 124M lr, kept (its lrs were barely tuned)
beta1, beta2 = 0.9, 0.95
weight_decay = 0.1
grad_clip = 1.0
