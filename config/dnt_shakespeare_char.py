# DNT on Tiny Shakespeare, character level, trained with mSGDW: small enough for a laptop CPU.
# The device is train.py's choice: a GPU when there is one (bf16), else the CPU (float32).
# python prepare_data.py shakespeare_char && python train.py config/dnt_shakespeare_char.py
out_dir = 'out/dnt_shakespeare_char'
dataset = 'shakespeare_char'
eval_interval, eval_iters, log_interval = 250, 50, 10
preset = 'dnt'
n_layer, n_head, n_embd = 4, 4, 128
batch_size, block_size, gradient_accumulation_steps = 32, 128, 1
max_iters = lr_decay_iters = 2000
warmup_iters = 100
opt = 'msgdw'
learning_rate, min_lr = 0.1, 0.01  # best of reproduce.py's CPU sweep (docs/results.md); the paper's 1.0 is for 124M
momentum = 0.9
weight_decay = 1e-2
grad_clip = 1.0
compile = False  # a run of minutes: compiling (about a minute) would not pay for itself, on a CPU or a GPU
