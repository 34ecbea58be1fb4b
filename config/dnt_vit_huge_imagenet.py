# DNT-ViT-H/14 on ImageNet-1k at 224 px with mSGDW, lr 0.5 (the paper: 81.2 top-1; AdamW twin: vit_huge_imagenet.py).
# The paper gives its learning rates for ViT-L only; these are the same.
#   python prepare_data.py imagenet --input ILSVRC2012/    # train/<wnid>/, val/<wnid>/ -> data/imagenet at 256 px
#   torchrun --standalone --nproc_per_node=8 train.py config/dnt_vit_huge_imagenet.py
# From the paper: the model, mSGDW with momentum 0.9 and lr 0.5, cosine decay, bf16. The paper is silent
# on the rest, which is the DeiT / timm recipe: 300 epochs, batch 1024, 5 warmup epochs, random-resized-crop
# 0.08-1 and flip, mixup 0.8 / CutMix 1.0, label smoothing 0.1, eval on the 224 center crop of 256.
# Not here (DeiT has them): RandAugment, random erasing, stochastic depth, repeated augmentation, EMA.
out_dir = 'out/dnt_vit_huge_imagenet'
wandb_run_name = 'dnt_vit_huge_imagenet'
dataset = 'imagenet'
image_size, stream, data_workers = 224, True, 8
augment, crop, flip = True, 'rrc', True
mixup, cutmix, label_smoothing = 0.8, 1.0, 0.1
preset = 'dnt'
n_layer, n_head, n_embd = 32, 16, 1280  # ViT-H
patch_size, pool = 14, 'cls'  # 256 patches and a cls token
batch_size, gradient_accumulation_steps = 16, 64  # 1024 images an iteration (8 micro-steps per GPU on 8)
max_iters = lr_decay_iters = 300 * 1251  # 300 epochs of 1,281,167 images
warmup_iters = 5 * 1251
eval_interval, log_interval = 1251, 50  # evaluate (all 50,000 val images) once an epoch
optimizer = 'msgdw'
learning_rate, min_lr = 0.5, 0.005  # the paper's lr; min_lr lr/100 (DeiT: 1e-5 for 5e-4 at batch 512)
momentum = 0.9
# not given by the paper: decoupled p <- p * (1 - lr * wd) with lr * wd = 5e-5 per step at peak, DeiT's AdamW 1e-3 x 0.05
weight_decay = 1e-4
grad_clip = 1.0
