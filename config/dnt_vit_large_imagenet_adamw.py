# DNT-ViT-L/16 on ImageNet-1k at 224 px with AdamW, lr 1e-3 (the paper: 82.1 top-1). The AdamW twin of
# dnt_vit_large_imagenet.py, whose header gives the commands: its model and recipe are that config's, its optimizer
# vit_large_imagenet.py's; each value's origin is on its line.
out_dir = 'out/dnt_vit_large_imagenet_adamw'
wandb_run_name = 'dnt_vit_large_imagenet_adamw'
dataset = 'imagenet'
image_size, stream, data_workers = 224, True, 8  # eval: the 224 center crop of the stored 256 (MAE, DeiT)
augment, crop, flip = True, 'rrc', True  # MAE: random-resized-crop and flip
# MAE: RandAugment (9, 0.5). Here DeiT III's 3-Augment and color jitter 0.3 (Touvron et al. 2022), which run batched
# on the device (images.py); DeiT III trains ViTs from scratch with them in place of RandAugment
three_augment, color_jitter = True, 0.3
random_erasing = 0.0  # MAE's from-scratch table has none (DeiT: 0.25)
mixup, cutmix, label_smoothing = 0.8, 1.0, 0.1  # MAE
drop_path = 0.2  # MAE, ViT-L
ema_decay = 0.9999  # MAE
preset = 'dnt'
n_layer, n_head, n_embd = 24, 16, 1024  # ViT-L
patch_size, pool = 16, 'cls'  # 196 patches and a cls token
batch_size, gradient_accumulation_steps = 32, 128  # MAE: 4096 images an iteration (16 micro-steps per GPU on 8)
max_iters = lr_decay_iters = 200 * 313  # MAE: 200 epochs for ViT-L, of 313 iterations (1,281,167 images / 4096)
warmup_iters = 20 * 313  # MAE: 20 warmup epochs
eval_interval, log_interval = 313, 20  # evaluate (all 50,000 val images, weights and EMA) once an epoch
opt = 'adamw'
learning_rate, min_lr = 1e-3, 1e-6  # the paper's lr (MAE's rule, 1e-4 x 4096 / 256, gives 1.6e-3); cosine to lr / 1000
beta1, beta2 = 0.9, 0.95  # MAE
weight_decay = 0.3  # MAE
grad_clip = 1.0  # not in MAE's table; every config here clips at 1
