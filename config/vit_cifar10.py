# The standard ViT twin of dnt_vit_cifar10.py: the same data, size and schedule, with AdamW.
out_dir = 'out/vit_cifar10'
dataset = 'cifar10'
eval_interval, log_interval = 500, 50
preset = 'standard'
n_layer, n_head, n_embd = 6, 4, 192
patch_size, pool = 4, 'cls'
batch_size, gradient_accumulation_steps = 128, 1
augment, crop_padding, label_smoothing = True, 4, 0.1
max_iters = lr_decay_iters = 4000  # about 10 epochs of 50,000 images
warmup_iters = 200
opt = 'adamw'
learning_rate, min_lr = 1e-3, 1e-5
beta1, beta2 = 0.9, 0.999
weight_decay = 0.05
grad_clip = 1.0
compile = False  # compiling costs about a minute and only pays off in longer GPU runs
