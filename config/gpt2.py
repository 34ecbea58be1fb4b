# The paper's baseline: standard GPT-2 124M (pre-norm, as nanoGPT) on OpenWebText with AdamW.
# nanoGPT / Sophia settings: 12 x 1024 x 40 = 491,520 tokens per iteration, 100k iterations.
# 8 GPUs: torchrun --standalone --nproc_per_node=8 train.py config/gpt2.py
wandb_run_name = 'gpt2_adamw'
out_dir = 'out/gpt2_adamw'
dataset = 'openwebtext'
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
preset = 'standard'
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
