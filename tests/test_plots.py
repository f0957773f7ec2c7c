"""tlutils.plots helpers."""


def test_displayable_spells_out_characters_the_font_lacks():
    from tlutils.plots import displayable

    assert displayable("a7") == "a7"
    assert displayable("\u299e") == "U+299E"  # ANGLE WITH S INSIDE: not in DejaVu Sans (a glyph class of notebook 00)


def test_sample_grid_labels_every_tile_and_has_no_meaningless_axis_labels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from tlutils.plots import filter_grid, sample_grid

    ax = sample_grid(torch.rand(10, 1, 8, 8), [f"c{i}" for i in range(10)], ncols=4)
    assert [t.get_text() for t in ax.texts] == [f"c{i}" for i in range(10)], "one label under every tile, all rows"
    assert ax.get_xlabel() == "" and ax.get_ylabel() == "", "no 'rows' / 'samples (columns)' axis labels"
    assert sample_grid(torch.rand(3, 3, 8, 8), xlabel="class").get_xlabel() == "class"
    ax = filter_grid(torch.randn(6, 3, 3, 3))
    assert "3x3" in ax.get_xlabel() and ax.get_ylabel() == ""
    plt.close("all")
