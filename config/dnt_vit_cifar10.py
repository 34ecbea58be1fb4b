# DNT-ViT on CIFAR-10 (python prepare_data.py cifar10), patch 4 on 32x32: 64 patches and a cls token.
# A few epochs in minutes on a GPU, which train.py picks when there is one; runs on a CPU too.
out_dir = 'out/dnt_vit_cifar10'
dataset = 'cifar10'
eval_interval, log_interval = 500, 50
preset = 'dnt'
n_layer, n_head, n_embd = 6, 4, 192
patch_size, pool = 4, 'cls'
batch_size, gradient_accumulation_steps = 128, 1
augment, crop_padding, label_smoothing = True, 4, 0.1
max_iters = lr_decay_iters = 4000  # about 10 epochs of 50,000 images
warmup_iters = 200
opt = 'msgdw'
learning_rate, min_lr = 0.03, 0.003  # best of reproduce.py's Fashion-MNIST sweep
momentum = 0.9
weight_decay = 1e-3
grad_clip = 1.0
compile = False  # compiling costs about a minute and only pays off in longer GPU runs
