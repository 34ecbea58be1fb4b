# DNT GPT-2 124M with AdamW: the paper's fourth cell.
wandb_run_name = 'dnt_gpt2_adamw'
out_dir = 'out/dnt_gpt2_adamw'
dataset = 'openwebtext'
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
preset = 'dnt'
n_layer, n_head, n_embd = 12, 12, 768
batch_size, block_size, gradient_accumulation_steps = 12, 1024, 40
max_iters = lr_decay_iters = 100000
warmup_iters = 2000
eval_interval, eval_iters, log_interval = 1000, 200, 10
opt = 'adamw'
learning_rate, min_lr = 6e-4, 6e-5
beta1, beta2 = 0.9, 0.95
weight_decay = 0.1
grad_clip = 1.0
