# DNT GPT of 1.4B parameters on OpenWebText with mSGDW (the paper: 2.408 val loss; standard + AdamW 2.435).
# 4 x 1024 x 120 = 491,520 tokens per iteration (on 8 GPUs 15 micro-steps of 4 each; micro-batch 4 is a guess for an
# 80 GB GPU: the paper measured 61 GB in all with mSGDW, 67 GB with AdamW), 100k iterations.
# 8 GPUs: torchrun --standalone --nproc_per_node=8 train.py config/dnt_gpt2_1b4.py
# The paper gives no shape for 1.4B. 48 layers x 1536 (24 heads of 64) is Levanter's gpt2_1536 (OpenWebText, context
# 1024; Levanter is where Sophia trained its GPT-2 1.5B). Its 1.44B parameters give the paper's optimizer state for
# 1.4B: 8 bytes a parameter with AdamW, 11.5 GB, and 4 with mSGDW, 5.7 GB; GPT-2 XL's 48 x 1600 (1.56B) would give
# 12.4 and 6.2 GB.
# The four cells at this size: gpt2_1b4.py, dnt_gpt2_1b4.py, gpt2_1b4_msgdw.py, dnt_gpt2_1b4_adamw.py.
wandb_run_name = 'dnt_gpt2_1b4_msgdw'
out_dir = 'out/dnt_gpt2_1b4_msgdw'
dataset = 'openwebtext'
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
preset = 'dnt'
n_layer, n_head, n_embd = 48, 24, 1536  # a guess, the one that fits: see above
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
