"""Claims of notebook 07 (quick profile): distillation with a transfer set, and keeping the source task."""

import pytest

pytestmark = pytest.mark.notebooks

CHAPTER = "07_distillation_multitask"


def test_records_every_headline_number(quick_results):
    r = quick_results[CHAPTER]
    names = ["teacher_acc", "student.parameters", "teacher.parameters"]
    names += [f"student_acc.{v}" for v in ("labels_only", "kd", "kd_transfer")]
    names += [f"{task}_acc.{m}" for task in ("source", "target") for m in ("sequential", "multitask", "lwf")]
    missing = [n for n in names if n not in r]
    assert not missing, f"not recorded: {missing}"
    for n in names:
        if n.endswith("_acc") or "_acc." in n:
            assert 0.0 < r[n] <= 1.0, f"{n} = {r[n]} is not an accuracy"


def test_student_is_at_least_ten_times_smaller(quick_results):
    r = quick_results[CHAPTER]
    ratio = r["teacher.parameters"] / r["student.parameters"]
    assert ratio >= 10, f"the student should have >= 10x fewer parameters than the teacher, has {ratio:.1f}x"


def test_the_teacher_is_a_good_teacher(quick_results):
    r = quick_results[CHAPTER]
    assert r["teacher_acc"] >= 0.85, f"fine-tuned teacher at 10 labels per class: {r['teacher_acc']:.3f}"
    assert r["teacher_acc"] > r["student_acc.labels_only"], "the teacher should beat the small student on labels"


def test_transfer_set_beats_labels_only_by_more_than_the_seed_spread(quick_results):
    r = quick_results[CHAPTER]
    gain = r["student_acc.kd_transfer"] - r["student_acc.labels_only"]
    spread = r["student_acc.kd_transfer.std"] + r["student_acc.labels_only.std"]
    assert gain > spread, (f"distilled student with the transfer set {r['student_acc.kd_transfer']:.3f} vs labels "
                           f"only {r['student_acc.labels_only']:.3f}: gain {gain:.3f} should exceed the summed stds "
                           f"{spread:.3f}")


def test_transfer_student_comes_close_to_the_teacher(quick_results):
    r = quick_results[CHAPTER]
    gap = r["teacher_acc"] - r["student_acc.kd_transfer"]
    assert gap < 0.05, f"the distilled student with the transfer set is {gap:.3f} below the teacher (should be < 0.05)"


@pytest.mark.parametrize("method", ["multitask", "lwf"])
def test_keeps_more_source_accuracy_than_sequential_at_comparable_target_accuracy(quick_results, method):
    r = quick_results[CHAPTER]
    kept, lost = r[f"source_acc.{method}"], r["source_acc.sequential"]
    margin = 3 * max(r[f"source_acc.{method}.std"], r["source_acc.sequential.std"], 0.01)
    assert kept > lost + margin, f"{method} glyph accuracy {kept:.3f}, sequential {lost:.3f} (margin {margin:.3f})"
    target, seq = r[f"target_acc.{method}"], r["target_acc.sequential"]
    assert target >= seq - 0.03, f"{method} digit accuracy {target:.3f} should be comparable to sequential {seq:.3f}"


def test_the_transfer_set_carries_more_than_the_labelled_images(quick_results):
    r = quick_results[CHAPTER]
    gain = r["student_acc.kd_transfer"] - r["student_acc.kd"]
    spread = r["student_acc.kd_transfer.std"] + r["student_acc.kd.std"]
    assert gain > spread, f"transfer set vs labelled images only: gain {gain:.3f}, summed stds {spread:.3f}"


def test_the_student_runs_faster_on_the_cpu(quick_results):
    r = quick_results[CHAPTER]
    assert r["inference_ms.student"] < r["inference_ms.teacher"], (
        f"student {r['inference_ms.student']:.1f} ms vs teacher {r['inference_ms.teacher']:.1f} ms per 256 images")
