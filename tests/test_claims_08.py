"""Claims of notebook 08 (quick profile): LP-FT in and out of distribution; parameter-efficient fine-tuning.

Out-of-distribution scores use AdaBN per shifted domain (the chapter's stated batch-norm handling). The margins
were checked at seeds the chapter was not developed on (runner ``--seed 3`` and ``--seed 6``)."""

import pytest

pytestmark = pytest.mark.notebooks

CHAPTER = "08_lpft_peft"
RECIPES = ("lp", "ft", "lpft")
METHODS = ("head", "bitfit", "lora", "adapter", "full")
DOMAINS = ("mnistm-lite", "syndigits", "digits8x8")


def test_records_every_headline_number(quick_results):
    r = quick_results[CHAPTER]
    names = [f"lpft.{s}_acc.{k}" for s in ("id", "ood") for k in RECIPES]
    names += [f"lpft.ood_acc.{k}.{d}" for k in RECIPES for d in DOMAINS]
    names += [f"lpft.paired_diff.{n}{s}" for n in ("ood.lpft_minus_ft", "id.lpft_minus_ft", "ood.ft_minus_lp",
                                                     "feature_change.lpft_minus_ft") for s in ("", ".ci95")]
    names += [f"lpft.feature_change.{k}" for k in ("ft", "lpft")]
    names += [f"peft.{s}.{m}" for s in ("acc", "trainable") for m in METHODS]
    names += ["peft.lora.checkpoint_bytes", "peft.full.checkpoint_bytes", "peft.lora.merge_max_abs_diff"]
    names += ["lpft.same_lr.lpft_less_change"]
    missing = [n for n in names if n not in r]
    assert not missing, f"not recorded: {missing}"
    for n in names:
        if "_acc." in n or n.startswith("peft.acc."):
            assert 0.0 < r[n] <= 1.0, f"{n} = {r[n]} is not an accuracy"
    assert 0.0 <= r["lpft.same_lr.lpft_less_change"] <= 1.0, "a share of the candidate rates"


def test_every_recipe_and_method_learns_the_target(quick_results):
    r = quick_results[CHAPTER]
    low = {n: r[n] for n in [f"lpft.id_acc.{k}" for k in RECIPES] + [f"peft.acc.{m}" for m in METHODS]
           if r[n] < 0.85}
    assert not low, f"in-distribution accuracy below 0.85 at 10 labels per class: {low}"


def test_every_recipe_scores_well_above_chance_out_of_distribution(quick_results):
    """With AdaBN per domain (the probe's frozen batch norms included), LP, FT and LP-FT read the shifted digits at
    least twice as well as chance (0.1). Before ``adabn`` re-estimated frozen batch norms, LP's "AdaBN" score was
    its source-statistics score, at chance (0.105 at SEED 0); with them it is 0.332 +- 0.014 over seeds 0-2."""
    r = quick_results[CHAPTER]
    for k in RECIPES:
        assert r[f"lpft.ood_acc.{k}"] > 0.2, f"{k}: OOD mean {r[f'lpft.ood_acc.{k}']:.3f}"


def test_lp_ft_moves_the_features_less_than_ft_on_average(quick_results):
    """1 - CKA to the pretrained features, mean over seeds, each recipe at the rate validation chose for it (the
    chapter says so, and prints the equal-rate comparison of link (1) of Kumar et al.'s mechanism beside it). The
    paired interval is the chapter's verdict, not a claim: at SEED 0 LP-FT minus FT was -21.9 +- 6.0 points
    (detectable), at the runner's --seed 7 -2.8 +- 3.4 (not detectable; validation chose 1e-3 for both there)."""
    r = quick_results[CHAPTER]
    assert r["lpft.feature_change.lpft"] < r["lpft.feature_change.ft"], (
        f"LP-FT {r['lpft.feature_change.lpft']:.3f} vs FT {r['lpft.feature_change.ft']:.3f}")


def test_lp_ft_falls_short_of_the_papers_ood_gain_here(quick_results):
    """Kumar et al.: LP-FT +10 points OOD over FT. Here the mean paired difference stays well below that (-5.1,
    -4.3 and +3.0 points at SEED 0, 3 and 6, none detectable); the chapter reads it beside LP's OOD accuracy and
    the feature change."""
    r = quick_results[CHAPTER]
    d, hw = r["lpft.paired_diff.ood.lpft_minus_ft"], r["lpft.paired_diff.ood.lpft_minus_ft.ci95"]
    assert d < 0.10, f"LP-FT minus FT, OOD: {d:+.3f} ± {hw:.3f}"


def test_parameter_efficient_methods_come_within_five_points_of_full_fine_tuning(quick_results):
    r = quick_results[CHAPTER]
    gaps = {m: r["peft.acc.full"] - r[f"peft.acc.{m}"] for m in METHODS}
    assert all(g < 0.05 for g in gaps.values()), gaps


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
