"""MaskProp R50-FPN on YouTube-VIS 2019 on a Cloud TPU pod slice: the global batch grows with the chips.

Every host of the slice runs the same command (jax.distributed finds the others on TPU VMs) and reads its own
shard of the data; data/ytvis2019, the converted weights and the workdir sit on storage every host sees (NFS or
a mounted bucket):

    python -m maskprop_jax.convert torchvision --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out weights/r50
    gcloud compute tpus tpu-vm ssh POD --worker=all --command="cd maskprop_jax && \\
        python train.py --config configs/ytvis_tpu.py --workdir /mnt/runs/ytvis_tpu"

2 clips per chip: on a v5p-32 (16 chips) a step takes 32 clips. The learning rate and every step count follow
the linear scaling rule from configs/ytvis.py's 16 clips (train.reference_batch_size), so the run sees the same
~10 epochs at any size: on 16 chips 20k steps at lr 0.04. Compute: bfloat16 activations, convolutions and
matmuls on the MXU with float32 parameters and accumulation (configs/ytvis.py's model.compute_dtype,
model/precision.py). Frames stay 384x640 (static shapes: one compiled program).

Expected runtime: about 2 hours on a v5p-32 plus evaluation (an estimate scaled from configs/ytvis.py, not
measured: no TPU was available to this project).
"""

from configs import ytvis


def get_config():
  config = ytvis.get_config()
  config.train.per_device_batch_size = 2
  config.train.reference_batch_size = 16  # the batch this schedule's lr and steps were written for
  config.data.worker_count = 16  # TPU VM hosts have many cores per chip to decode with
  config.optimizer.warmup_steps = 2_000  # the larger rates of big slices want a longer warmup
  return config
