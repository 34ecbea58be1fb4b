# ViT-H/14 on ImageNet-1k at 224 px with AdamW, lr 1e-3 (the paper: 80.8 top-1; its lr for ViT-L): the standard twin of
# dnt_vit_huge_imagenet.py, whose header gives the commands and what comes from the paper and what from DeiT.
out_dir = 'out/vit_huge_imagenet'
wandb_run_name = 'vit_huge_imagenet'
dataset = 'imagenet'
image_size, stream, data_workers = 224, True, 8
augment, crop, flip = True, 'rrc', True
mixup, cutmix, label_smoothing = 0.8, 1.0, 0.1
preset = 'standard'
n_layer, n_head, n_embd = 32, 16, 1280  # ViT-H
patch_size, pool = 14, 'cls'
batch_size, gradient_accumulation_steps = 16, 64  # 1024 images an iteration
max_iters = lr_decay_iters = 300 * 1251  # 300 epochs
warmup_iters = 5 * 1251
eval_interval, log_interval = 1251, 50
optimizer = 'adamw'
learning_rate, min_lr = 1e-3, 1e-5  # the paper's lr; DeiT's min_lr
beta1, beta2 = 0.9, 0.999  # DeiT / timm
weight_decay = 0.05  # DeiT
grad_clip = 1.0
