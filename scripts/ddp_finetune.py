"""Full fine-tuning (chapter 02) or chapter 04's DANN on several GPUs with PyTorch's own DistributedDataParallel.

    torchrun --nproc_per_node=4 scripts/ddp_finetune.py --profile full     # ImageNet ResNet-18 -> CIFAR-10
    torchrun --nproc_per_node=2 scripts/ddp_finetune.py --profile quick    # offline: glyph backbone -> mnist5k (CPU ok)
    torchrun --nproc_per_node=4 scripts/ddp_finetune.py --profile full --method dann   # chapter 04 (DANN)

``--method dann`` trains chapter 04's DANN (``tlutils.adapt_runs.train_method``, the profile's ``recipe_for(cfg)``)
on the pair ``--source``/``--target`` and reports the target test accuracy; the recipe's batch is global, so each
of N ranks forwards ``batch_size / N`` source and as many target images per step.

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
from tlutils.adapt import recipe_for
from tlutils.adapt_runs import PAIR, load_pair, train_method
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
    parser.add_argument("--method", choices=("finetune", "dann"), default="finetune",
                        help="finetune: chapter 02's full fine-tuning; dann: chapter 04's DANN")
    parser.add_argument("--source", default=PAIR[0], help="--method dann: labelled source domain")
    parser.add_argument("--target", default=PAIR[1], help="--method dann: unlabelled target domain")
    args = parser.parse_args()
    if args.method == "dann":
        return train_dann_pair(args)

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


def train_dann_pair(args) -> None:
    """Chapter 04's DANN on ``args.source`` -> ``args.target`` under the profile's recipe, on every rank."""
    device = init_distributed()
    cfg = tlutils.setup(args.profile, args.seed, device=str(device))
    rank, world = dist_info()
    if world > 1 and rank != 0:
        torch.distributed.barrier()  # let rank 0 build the domain caches first
    source, target_train, target_test = load_pair(args.source, args.target, seed=args.seed,
                                                  download=cfg.download and rank == 0, verify=cfg.verify)
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    overrides = {"batch_size": args.batch_size} if args.batch_size else {}
    recipe = recipe_for(cfg, **({"lr": args.lr} if args.lr else {}), **overrides)
    net, history = train_method("dann", source, target_train, recipe, seed=args.seed, device=device)
    acc = evaluate(net, target_test, device=device)["acc"]
    if is_main_process():
        path = cfg.data_dir / "checkpoints" / f"ddp-dann-{args.source}-{args.target}-{cfg.profile}-seed{cfg.seed}.pt"
        save_checkpoint(net.cpu(), path, profile=cfg.profile, seed=cfg.seed, world_size=world, target_acc=acc,
                        method="dann", history=history.epochs)
        print(f"world size {world}: DANN {args.source} -> {args.target} target accuracy {acc:.4f}; checkpoint {path}")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
