"""display.visible: what a labeler's terminal or page may be sent of untrusted model text."""

import unicodedata

import pytest

from rlhf_jax.feedback.display import visible


@pytest.mark.parametrize("text, shown", [
    ("fine\x1b[2Kgone", "fine<U+001B>[2Kgone"),  # erase line
    ("\x1b[1A\x1b[10D", "<U+001B>[1A<U+001B>[10D"),  # cursor up, left
    ("\x1b]0;owned\x07", "<U+001B>]0;owned<U+0007>"),  # OSC 0: window title
    ("\x1b]52;c;cm0gLXJmIH4=\x07", "<U+001B>]52;c;cm0gLXJmIH4=<U+0007>"),  # OSC 52: clipboard
    ("photo\u202egnp.exe", "photo<U+202E>gnp.exe"),  # RIGHT-TO-LEFT OVERRIDE
    ("\u2066a\u2069\u200bb\ufeff", "<U+2066>a<U+2069><U+200B>b<U+FEFF>"),  # isolates, zero-width
    ("a\x7fb\x9bc\x85d", "a<U+007F>b<U+009B>c<U+0085>d"),  # DEL; C1 CSI and NEL
    ("a\x00b\rc", "a<U+0000>b<U+000D>c"),
    ("tag\U000e0041", "tag<U+E0041>"),  # invisible tag characters carry hidden ASCII
])
def test_controls_and_format_characters_are_written_out(text, shown):
  assert visible(text) == shown


@pytest.mark.parametrize("text", [
    "", "plain ASCII, with punctuation: <b>&amp;</b> \\x1b",
    "line one\nline two\n\tindented", "café résumé", "日本語のテキスト",
    "e\u0301 (combining)",
    "emoji 🙂", "עברית ltr and rtl letters", "non\u00a0breaking",
])
def test_ordinary_text_newline_and_tab_are_untouched(text):
  assert visible(text) == text


def test_every_control_and_format_character_is_covered():
  # The output of visible() never holds a Cc (but newline and tab) or Cf character itself.
  everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
  left = {unicodedata.category(c) for c in visible(everything) if c not in "\n\t"}
  assert not left & {"Cc", "Cf"}
