# DNT GPT-2 124M on OpenWebText with mSGDW: the paper's headline run.
# 12 x 1024 x 40 = 491,520 tokens per iteration, 100k iterations (nanoGPT / Sophia settings).
# 8 GPUs: torchrun --standalone --nproc_per_node=8 train.py config/dnt_gpt2.py
wandb_run_name = 'dnt_gpt2_msgdw'
out_dir = 'out/dnt_gpt2_msgdw'
dataset = 'openwebtext'
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
preset = 'dnt'
n_layer, n_head, n_embd = 12, 12, 768
batch_size, block_size, gradient_accumulation_steps = 12, 1024, 40
max_iters = lr_decay_iters = 100000
warmup_iters = 2000
eval_interval, eval_iters, log_interval = 1000, 200, 10
opt = 'msgdw'
learning_rate, min_lr = 1.0, 0.1  # the paper's lr for DNT 124M
momentum = 0.9
# not given by the paper: decoupled p <- p * (1 - lr * wd); lr * wd = 1e-4 per step at peak,
# about AdamW's 6e-4 * 0.1; the CPU sweeps' best DNT + mSGDW cells at 1,500 and 5,000 iterations
# have the same lr * wd (docs/results.md).
weight_decay = 1e-4
grad_clip = 1.0
