"""tlutils.plots helpers."""


def test_displayable_spells_out_characters_the_font_lacks():
    from tlutils.plots import displayable

    assert displayable("a7") == "a7"
    assert displayable("\u299e") == "U+299E"  # ANGLE WITH S INSIDE: not in DejaVu Sans (a glyph class of notebook 00)
