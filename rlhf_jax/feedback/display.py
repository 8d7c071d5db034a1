"""Untrusted text made safe to show a labeler: control and format characters are written out.

Model text reaches a person's terminal (`terminal.py`) and a web page (`server.py`). Printed raw,
an ESC sequence moves the cursor or erases a line (`\\x1b[2K`), sets the window title (OSC 0) or
writes the clipboard (OSC 52, `\\x1b]52;c;...\\x07`); in a terminal and in a browser alike, bidi
controls reorder what is read (U+202E RIGHT-TO-LEFT OVERRIDE shows "gnp.exe" as "exe.png") and
zero-width characters hide text in plain sight. A labeler must judge what the model wrote, not
what these characters make the screen show, so `visible` writes each of them as `<U+XXXX>`:

  * Unicode category Cc, the controls: C0 (U+0000..U+001F), DEL (U+007F) and C1 (U+0080..U+009F),
    except newline and tab, which are layout the labeler should see as layout;
  * Unicode category Cf, the invisible format characters: bidi embeddings, overrides and isolates
    (U+202A..U+202E, U+2066..U+2069), U+200B..U+200F, the soft hyphen, U+FEFF, tag characters.

`<U+XXXX>` is the code point in upper-case hex, at least four digits (ESC is `<U+001B>`, carriage
return `<U+000D>`, RLO `<U+202E>`): one form for every character, and a name a reader can look up.
Everything else is left as it is: letters of any script, combining accents, emoji. Only what is
shown changes; the store keeps the original text, and judgements are stored against sample ids.
The cost is that an emoji joined with U+200D ZERO WIDTH JOINER, or a script that needs U+200C,
shows the joiner written out.
"""

from __future__ import annotations

import unicodedata

_KEPT = frozenset("\n\t")
_WRITTEN_OUT = frozenset(("Cc", "Cf"))


def _shown(char: str) -> str:
  if char in _KEPT or unicodedata.category(char) not in _WRITTEN_OUT:
    return char
  return f"<U+{ord(char):04X}>"


def visible(text: str) -> str:
  """`text` with every control (but newline and tab) and format character written as <U+XXXX>."""
  if text.isprintable():  # no Cc or Cf (nor newline): most single-line text, no per-char work
    return text
  return "".join(map(_shown, text))
