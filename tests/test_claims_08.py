"""Claims of notebook 08 (quick profile): LP-FT in and out of distribution; parameter-efficient fine-tuning."""

import pytest

pytestmark = pytest.mark.notebooks

CHAPTER = "08_lpft_peft"
RECIPES = ("lp", "ft", "lpft")
METHODS = ("head", "bitfit", "lora", "adapter", "full")


def test_records_every_headline_number(quick_results):
    r = quick_results[CHAPTER]
    names = [f"lpft.{s}_acc.{k}" for s in ("id", "ood") for k in RECIPES]
    names += ["lpft.paired_diff.ood.lpft_minus_ft", "lpft.paired_diff.ood.lpft_minus_ft.ci95"]
    names += [f"lpft.feature_change.{k}" for k in ("ft", "lpft")]
    names += [f"peft.{s}.{m}" for s in ("acc", "trainable") for m in METHODS]
    names += ["peft.lora.checkpoint_bytes", "peft.full.checkpoint_bytes", "peft.lora.merge_max_abs_diff"]
    missing = [n for n in names if n not in r]
    assert not missing, f"not recorded: {missing}"
    for n in names:
        if "_acc." in n or n.startswith("peft.acc."):
            assert 0.0 < r[n] <= 1.0, f"{n} = {r[n]} is not an accuracy"


def test_lora_trains_under_ten_percent_of_full_fine_tuning(quick_results):
    r = quick_results[CHAPTER]
    share = r["peft.trainable.lora"] / r["peft.trainable.full"]
    assert share < 0.10, f"LoRA trains {share:.1%} of the parameters full fine-tuning trains"


def test_trainable_counts_order_as_the_methods_say(quick_results):
    r = quick_results[CHAPTER]
    n = {m: r[f"peft.trainable.{m}"] for m in METHODS}
    assert n["head"] < n["bitfit"] < n["lora"] < n["full"], n
    assert n["head"] < n["adapter"] < n["full"], n


def test_merged_lora_gives_the_same_outputs_and_its_checkpoint_is_small(quick_results):
    r = quick_results[CHAPTER]
    assert r["peft.lora.merge_max_abs_diff"] < 1e-4
    share = r["peft.lora.checkpoint_bytes"] / r["peft.full.checkpoint_bytes"]
    assert share < 0.10, f"LoRA checkpoint (factors + head) is {share:.1%} of the full one"
