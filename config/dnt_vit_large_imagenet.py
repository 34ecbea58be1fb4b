# DNT-ViT-L/16 on ImageNet-1k at 224 px with mSGDW, lr 0.5 (the paper: 81.5 top-1; AdamW twin: vit_large_imagenet.py).
#   python prepare_data.py imagenet --input ILSVRC2012/    # train/<wnid>/, val/<wnid>/ -> data/imagenet at 256 px
#   torchrun --standalone --nproc_per_node=8 train.py config/dnt_vit_large_imagenet.py
# From the paper: the model, mSGDW with momentum 0.9 and lr 0.5, cosine decay, bf16. The rest is the from-scratch
# ViT-L recipe of the MAE paper (He et al. 2022, appendix A.2, "Supervised training ViT-L/H from scratch", 82.5
# top-1 with AdamW), where it gives a value; each value's origin is on its line.
out_dir = 'out/dnt_vit_large_imagenet'
wandb_run_name = 'dnt_vit_large_imagenet'
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
opt = 'msgdw'
learning_rate, min_lr = 0.5, 5e-4  # the paper's lr; cosine to lr / 1000 (MAE: to 0)
momentum = 0.9  # the paper
# not given by the paper: lr x wd per step at peak as MAE's AdamW here (1e-3 x 0.3) gives wd 6e-4
weight_decay = 6e-4
grad_clip = 1.0  # not in MAE's table; every config here clips at 1
