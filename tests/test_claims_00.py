"""Claims of notebook 00 (quick profile): the source backbone is actually pretrained."""

import pytest

pytestmark = pytest.mark.notebooks


def test_source_backbone_learned_hundreds_of_classes(quick_results):
    r = quick_results["00_pretrain_source"]
    assert r["source.num_classes"] >= 200, "the source must be broad: hundreds of glyph classes"
    # chance is 1/num_classes (< 0.5%); a useful source model classifies held-out renders well
    assert r["source_acc"] >= 0.85, f"source accuracy {r['source_acc']:.3f} is too low to transfer from"
