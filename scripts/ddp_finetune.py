"""Full fine-tuning (chapter 02) on several GPUs with PyTorch's own DistributedDataParallel.

    torchrun --nproc_per_node=4 scripts/ddp_finetune.py --profile full     # ImageNet ResNet-18 -> CIFAR-10
    torchrun --nproc_per_node=2 scripts/ddp_finetune.py --profile quick    # offline: glyph backbone -> mnist5k (CPU ok)

``fit`` needs no change under torchrun: it wraps the model in DDP, gives each rank its share of every
global batch, reduces the logged metrics, and shows progress on rank 0 only. The checkpoint is
written by rank 0. The full profile downloads CIFAR-10 and the ImageNet weights (``cfg.download``) on
rank 0 while the other ranks wait on a barrier, then every rank reads the cached files. The network's
inputs are prepared by ``tlutils.imagenet.imagenet_resnet`` (resize to 224 px, ImageNet mean/std), the
same wrapper notebooks 02 and 03 use.
"""

from __future__ import annotations

import argparse

import torch

import tlutils
from tlutils.distributed import dist_info, init_distributed, is_main_process
from tlutils.models import Classifier, make_head, save_checkpoint
from tlutils.train import evaluate, fit


def load_task(cfg, download: bool):
    """(model, train, test) for the profile: a common recipe, ImageNet ResNet-18 on CIFAR-10, or the offline pair."""
    from tlutils.data import load_domain
    from tlutils.imagenet import imagenet_resnet

    if cfg.profile == "full":
        backbone = imagenet_resnet("resnet18", download=download)  # resize + ImageNet mean/std, as notebook 02
        train, test = (load_domain("cifar10", s, download=download, verify=cfg.verify) for s in ("train", "test"))
        return Classifier(backbone, make_head(backbone.out_features, 10)), train, test
    from tlutils.source import load_source_model

    source, _ = load_source_model(cfg)
    train, test = load_domain("mnist5k", "train"), load_domain("mnist5k", "test")
    return Classifier(source.backbone, make_head(source.backbone.out_features, 10)), train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (split over ranks)")
    args = parser.parse_args()

    device = init_distributed()
    cfg = tlutils.setup(args.profile, args.seed, device=str(device))
    rank, world = dist_info()
    if world > 1 and rank != 0:
        torch.distributed.barrier()  # let rank 0 download/build caches first
    model, train, test = load_task(cfg, download=cfg.download and rank == 0)
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    epochs = args.epochs or cfg.pick(quick=2, full=15)
    lr = args.lr or cfg.pick(quick=1e-3, full=1e-3)
    batch_size = args.batch_size or cfg.pick(quick=128, full=256)
    history = fit(model, train, val=test, epochs=epochs, lr=lr, batch_size=batch_size, device=device,
                  seed=args.seed, desc=f"ddp x{world}")
    acc = evaluate(model, test, device=device)["acc"]
    if is_main_process():
        path = cfg.data_dir / "checkpoints" / f"ddp-finetune-{cfg.profile}-seed{cfg.seed}.pt"
        save_checkpoint(model.cpu(), path, profile=cfg.profile, seed=cfg.seed, world_size=world,
                        target_acc=acc, history=history.epochs)
        print(f"world size {world}: target accuracy {acc:.4f}; checkpoint {path}")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
