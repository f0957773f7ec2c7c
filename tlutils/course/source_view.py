"""Read the code a chapter teaches: ``show_source(obj)`` displays a function's or class's source with its file
and first line, in a notebook (syntax-highlighted Markdown) or as plain text elsewhere.

The chapters call it on the method they teach (the loss, the step, the inner loop), so a student reads the
very lines the visible run just executed, and can open the file at that line to change them.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

from IPython import get_ipython
from IPython.display import Markdown, display

REPO = Path(__file__).resolve().parents[2]


def source_location(obj) -> tuple[str, int]:
    """``(path, first line)`` of ``obj``'s definition; the path is relative to the repository when inside it."""
    obj = inspect.unwrap(obj)
    try:
        path = Path(inspect.getsourcefile(obj) or inspect.getfile(obj)).resolve()
        _, line = inspect.getsourcelines(obj)
    except (TypeError, OSError) as err:
        raise TypeError(f"show_source needs a Python function, class or method defined in a file, "
                        f"got {type(obj).__name__} {obj!r} ({err})") from err
    try:
        shown = str(path.relative_to(REPO))
    except ValueError:
        shown = str(path)
    return shown, max(1, line)


def source_markdown(obj, *, max_lines: int | None = None) -> str:
    """Markdown of ``obj``'s source under a ``name in path, line N`` heading (cut at ``max_lines``)."""
    path, line = source_location(obj)
    lines = textwrap.dedent(inspect.getsource(inspect.unwrap(obj))).rstrip().splitlines()
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines] + [f"# ... {len(lines) - max_lines} more lines in {path}"]
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
    return f"**`{name}`** in `{path}`, line {line}:\n\n```python\n" + "\n".join(lines) + "\n```"


def show_source(obj, *, max_lines: int | None = None) -> None:
    """Display ``obj``'s source with its file and line (Markdown in a notebook, plain text elsewhere).

    ``max_lines`` cuts long definitions (the rest is a click away at the printed location). Returns None, so
    a notebook cell does not echo the text a second time.
    """
    text = source_markdown(obj, max_lines=max_lines)
    if get_ipython() is not None:
        display(Markdown(text))
    else:
        print(text)
