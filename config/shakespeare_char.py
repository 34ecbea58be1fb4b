# The standard GPT twin of dnt_shakespeare_char.py: the same data, size and schedule, with AdamW.
out_dir = 'out/shakespeare_char'
dataset = 'shakespeare_char'
eval_interval, eval_iters, log_interval = 250, 50, 10
preset = 'standard'
n_layer, n_head, n_embd = 4, 4, 128
batch_size, block_size, gradient_accumulation_steps = 32, 128, 1
max_iters = lr_decay_iters = 2000
warmup_iters = 100
opt = 'adamw'
learning_rate, min_lr = 1e-2, 1e-3  # best of reproduce.py's CPU sweep (docs/results.md)
beta1, beta2 = 0.9, 0.95
weight_decay = 0.1
grad_clip = 1.0
compile = False  # a run of minutes: compiling (about a minute) would not pay for itself, on a CPU or a GPU
