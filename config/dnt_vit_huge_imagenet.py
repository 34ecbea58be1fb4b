# DNT-ViT-H/14 on ImageNet-1k at 224 px with mSGDW, lr 0.5 (the paper: 81.2 top-1; AdamW twin: vit_huge_imagenet.py).
#   python prepare_data.py imagenet --input ILSVRC2012/    # train/<wnid>/, val/<wnid>/ -> data/imagenet at 256 px
#   torchrun --standalone --nproc_per_node=8 train.py config/dnt_vit_huge_imagenet.py
# From the paper: the model, mSGDW with momentum 0.9, cosine decay, bf16; its lr is given for ViT-L only and kept.
# The rest is the MAE paper's from-scratch ViT-H recipe (He et al. 2022, appendix A.2), as in dnt_vit_large_imagenet.py.
out_dir = 'out/dnt_vit_huge_imagenet'
wandb_run_name = 'dnt_vit_huge_imagenet'
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
opt = 'msgdw'
learning_rate, min_lr = 0.5, 5e-4  # the paper's ViT-L lr; cosine to lr / 1000 (MAE: to 0)
momentum = 0.9  # the paper
weight_decay = 6e-4  # not given by the paper: lr x wd per step as MAE's AdamW (1e-3 x 0.3)
grad_clip = 1.0  # not in MAE's table; every config here clips at 1
