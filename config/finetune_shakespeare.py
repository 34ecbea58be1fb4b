# Fine-tune OpenAI's GPT-2 on Tiny Shakespeare in GPT-2 BPE, as in nanoGPT's fine-tuning example.
# pip install transformers        (the weights come from the Hugging Face hub, once, into its cache)
# python prepare_data.py shakespeare && python train.py config/finetune_shakespeare.py
# python sample.py --out_dir=out/finetune_shakespeare --start="ROMEO:"
# Bigger models: --init_from=gpt2-medium, gpt2-large or gpt2-xl (1.5B parameters: a GPU).
out_dir = 'out/finetune_shakespeare'
dataset = 'shakespeare'
init_from = 'gpt2'  # sets n_layer, n_head, n_embd, bias and vocab_size
preset = 'standard'  # GPT-2's architecture: DNT's extra norms have no pretrained weights
dropout = 0.1  # GPT-2 was trained with 0.1; it also regularizes fine-tuning on 300k tokens
eval_interval, eval_iters, log_interval = 5, 20, 1
always_save_checkpoint = False  # keep the checkpoint with the best val loss
# 32 sequences of 1024 tokens per iteration, for a GPU. On a CPU, lower batch_size
# and block_size (e.g. --batch_size=1 --block_size=256): each full iteration is ~2e13 FLOPs.
batch_size, block_size, gradient_accumulation_steps = 4, 1024, 8
max_iters = 20
opt = 'adamw'
learning_rate = 3e-5  # small and constant: adapt the pretrained weights, don't retrain them
decay_lr = False
weight_decay = 0.1
grad_clip = 1.0
compile = False  # 20 iterations: compiling would not pay for itself
