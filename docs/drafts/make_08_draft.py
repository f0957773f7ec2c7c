import nbformat as nbf
nb = nbf.v4.new_notebook(); C = []
md = lambda s: C.append(nbf.v4.new_markdown_cell(s))
def code(s, tags=None):
    c = nbf.v4.new_code_cell(s)
    if tags: c.metadata["tags"] = tags
    C.append(c)
md("""# 08 · Fine-tuning as it is done today: LP-FT and parameter-efficient fine-tuning

Chapters 01-03 chose between frozen features and full fine-tuning. Two newer recipes:

* **LP-FT** (Kumar et al., ICLR 2022): train the head first (linear probe), then fine-tune everything. The paper
  argues a random head's large early gradients distort the pretrained features, which costs accuracy on
  shifted data; over ten shifts it reports FT +2 % in-distribution but -7 % out-of-distribution against LP,
  and LP-FT +1 % ID and +10 % OOD against FT.
* **Parameter-efficient fine-tuning**: train a small set of parameters. LoRA (Hu et al. 2021) replaces a
  frozen weight $W$ by $W + \\frac{\\alpha}{r} B A$ with $A \\in \\mathbb{R}^{r\\times d_{in}}$,
  $B \\in \\mathbb{R}^{d_{out}\\times r}$, $B = 0$ at the start; BitFit trains biases only; adapters add a small
  residual bottleneck $x + \\mathrm{up}(\\mathrm{relu}(\\mathrm{down}(x)))$.""")
code('PROFILE = None  # "quick" or "full"; None reads $TLUTILS_PROFILE\nSEED = 0\nN_SEEDS = 3\nK = 10  # labels per class', ["parameters"])
code("""import matplotlib.pyplot as plt
import numpy as np

import tlutils
from tlutils.course.source_view import show_source
from tlutils.data import load_domain
from tlutils.lpft import PEFT_METHODS, PeftRecipe, feature_change, lp_ft, train_peft
from tlutils.peft import LoRA, checkpoint_bytes, count_parameters, lora_state_dict, merge_lora
from tlutils.plots import plot_history, show_table
from tlutils.results import format_mean_std, paired_difference, record
from tlutils.source import load_source_model
from tlutils.train import accuracy

cfg = tlutils.setup(PROFILE, SEED)
source, _ = load_source_model(cfg)
source.eval()
train, val = load_domain("mnist5k", "train", device=cfg.device).split_validation(cfg.pick(quick=50, full=50, smoke=20), seed=0)
test = load_domain("mnist5k", "test", device=cfg.device)
ood = {d: load_domain(d, "test", device=cfg.device) for d in ("mnistm-lite", "syndigits")}
seeds = [SEED + i for i in range(cfg.pick(quick=N_SEEDS, full=N_SEEDS, smoke=2))]
recipe = PeftRecipe()""")
md("## 1. One LoRA fine-tune\nChange the rank `r` and rerun: the curve and the trainable count move with it.")
code("""labelled = train.per_class(K, SEED)
model, history = train_peft("lora", source, labelled, num_classes=10, recipe=recipe, seed=SEED, rank=4,
                            device=cfg.device)
print(f"LoRA r=4 trains {count_parameters(model):,} of {count_parameters(model, trainable=False):,} parameters; "
      f"test accuracy {accuracy(model, test, device=cfg.device):.3f}")
plot_history(history, keys=["train_loss"], title="one LoRA fine-tune (training loss per epoch)")
plt.show()""")
md("## 2. Read the code")
code("show_source(LoRA)")
md("## 3. Under the hood: LoRA in plain torch, merging, and counting by hand")
code("""import torch
layer = next(m for m in model.modules() if isinstance(m, LoRA) and isinstance(m.base, torch.nn.Conv2d))
x = torch.randn(2, layer.base.in_channels, 8, 8, device=layer.lora_A.device)
w = layer.base.weight + (layer.alpha / layer.r) * (layer.lora_B @ layer.lora_A).reshape(layer.base.weight.shape)
by_hand = torch.nn.functional.conv2d(x, w, layer.base.bias, layer.base.stride, layer.base.padding)
torch.testing.assert_close(layer(x), by_hand)
hand_count = sum(m.lora_A.numel() + m.lora_B.numel() for m in model.modules() if isinstance(m, LoRA))
hand_count += sum(p.numel() for p in model.head.parameters())
assert hand_count == count_parameters(model)
import copy
with torch.no_grad():
    merged = merge_lora(copy.deepcopy(model)).eval()
    torch.testing.assert_close(merged(test.x[:64]), model(test.x[:64]), rtol=1e-4, atol=1e-4)
lora_bytes, full_bytes = checkpoint_bytes(lora_state_dict(model, also=("head",))), checkpoint_bytes(merged.state_dict())
record("peft.lora.checkpoint_bytes", lora_bytes)
record("peft.full.checkpoint_bytes", full_bytes)
print(f"plain-torch LoRA = library LoRA; merged model gives the same outputs; LoRA checkpoint {lora_bytes:,} bytes "
      f"vs full {full_bytes:,} ({lora_bytes / full_bytes:.1%})")""")
md("""## 4. LP vs FT vs LP-FT, in and out of distribution
Batch norms: every model is scored in eval mode, with the running statistics from training (no adaptation to
the shifted domain).""")
code("""rows, acc = [], {m: {"id": [], "ood": []} for m in ("lp", "ft", "lpft")}
change = {"ft": [], "lpft": []}
for s in seeds:
    lab = train.per_class(K, s)
    runs = {"lp": train_peft("head", source, lab, num_classes=10, recipe=recipe, seed=s, device=cfg.device)[0],
            "ft": train_peft("full", source, lab, num_classes=10, recipe=recipe, seed=s, device=cfg.device)[0],
            "lpft": lp_ft(source, lab, num_classes=10, recipe=recipe, seed=s, device=cfg.device)[0]}
    for m, net in runs.items():
        acc[m]["id"].append(accuracy(net, test, device=cfg.device))
        acc[m]["ood"].append(np.mean([accuracy(net, d, device=cfg.device) for d in ood.values()]))
    for m in change:
        change[m].append(1 - feature_change(source, runs[m], test, device=cfg.device)["cka"])
for m in acc:
    record(f"lpft.id_acc.{m}", np.mean(acc[m]["id"]))
    record(f"lpft.ood_acc.{m}", np.mean(acc[m]["ood"]))
for m in change:
    record(f"lpft.feature_change.{m}", np.mean(change[m]))
diff = paired_difference(acc["lpft"]["ood"], acc["ft"]["ood"])
record("lpft.paired_diff.ood.lpft_minus_ft", diff["mean"])
record("lpft.paired_diff.ood.lpft_minus_ft.ci95", diff["half_width"])
show_table([{"method": m, "ID acc": format_mean_std(acc[m]["id"]), "OOD acc": format_mean_std(acc[m]["ood"])}
            for m in acc])""")
md("## 5. Accuracy against trainable parameters")
code("""peft = {m: [] for m in PEFT_METHODS}
trainable = {}
for s in seeds:
    lab = train.per_class(K, s)
    for m in PEFT_METHODS:
        net, _ = train_peft(m, source, lab, num_classes=10, recipe=recipe, seed=s, device=cfg.device)
        peft[m].append(accuracy(net, test, device=cfg.device))
        trainable[m] = count_parameters(net)
for m in PEFT_METHODS:
    record(f"peft.acc.{m}", np.mean(peft[m]))
    record(f"peft.trainable.{m}", trainable[m])
fig, ax = plt.subplots(figsize=(6, 4))
for m in PEFT_METHODS:
    ax.errorbar(trainable[m], np.mean(peft[m]), yerr=np.std(peft[m]), fmt="o", capsize=3, label=m)
ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel="test accuracy (mnist5k)",
       title=f"K={K} labels per class, equal steps, {len(seeds)} seeds")
ax.legend()
plt.show()""")
md("## What to take away\n(draft: the sentences will be computed from the results above)")
nb.cells = C
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "/tmp/ch08/08_lpft_peft.ipynb")
