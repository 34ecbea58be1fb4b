# DNT-ViT-H/14 on ImageNet-1k at 224 px with AdamW, lr 1e-3 (the paper: 81.9 top-1). The AdamW twin of
# dnt_vit_huge_imagenet.py, whose header gives the commands: its model and recipe are that config's, its optimizer
# vit_huge_imagenet.py's; each value's origin is on its line.
out_dir = 'out/dnt_vit_huge_imagenet_adamw'
wandb_run_name = 'dnt_vit_huge_imagenet_adamw'
dataset = 'imagenet'
image_size, stream, data_workers = 224, True, 8  # eval: the 224 center crop of the stored 256 (MAE, DeiT)
augment, crop, flip = True, 'rrc', True  # MAE
three_augment, color_jitter = True, 0.3  # DeiT III's, in place of MAE's RandAugment (9, 0.5): see the ViT-L config
random_erasing = 0.0  # MAE's from-scratch table has none (DeiT: 0.25)
mixup, cutmix, label_smoothing = 0.8, 1.0, 0.1  # MAE
drop_path = 0.3  # MAE, ViT-H
ema_decay = 0.9999  # MAE
preset = 'dnt'
n_layer, n_head, n_embd = 32, 16, 1280  # ViT-H
patch_size, pool = 14, 'cls'  # 256 patches and a cls token
batch_size, gradient_accumulation_steps = 16, 256  # MAE: 4096 images an iteration (32 micro-steps per GPU on 8)
max_iters = lr_decay_iters = 200 * 313  # MAE: 200 epochs for ViT-H
warmup_iters = 20 * 313  # MAE: 20 warmup epochs
eval_interval, log_interval = 313, 20
opt = 'adamw'
learning_rate, min_lr = 1e-3, 1e-6  # the paper's ViT-L lr (MAE's rule gives 1.6e-3); cosine to lr / 1000
beta1, beta2 = 0.9, 0.95  # MAE
weight_decay = 0.3  # MAE
grad_clip = 1.0  # not in MAE's table; every config here clips at 1
