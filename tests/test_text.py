"""Names from files reach the terminal escaped: one line, no control or escape sequences."""

from st2chip.text import printable


def test_control_characters_become_visible_escapes():
    name = "lif\nTraceback (most recent call last):\x1b[31m\r\t\x7f\x9b\u202e"
    shown = printable(name)
    assert shown == "lif\\nTraceback (most recent call last):\\x1b[31m\\r\\t\\x7f\\x9b\\u202e"
    assert shown.isprintable() and printable(shown) == shown  # once is enough


def test_ordinary_text_is_unchanged():
    for text in ("fc1.lif", "blocks.0.attn", "größe / 层", "C:\\path\\x41", ""):
        assert printable(text) == text
