"""Plain fixed-width tables, fast enough for 100,000 rows (rich's Table takes ~1.7 ms a row).

`format_table(columns, rows, colour)` returns the table as one string. A cell is a str, or a
(str, style) pair; styles are a few ANSI colours, emitted only when `colour` is true (use
`want_colour()`: a terminal, and NO_COLOR unset).
"""
import os
import sys

_SGR = {
    "green": "32", "yellow": "33", "orange": "38;5;208", "red": "31", "magenta": "35", "maroon": "38;5;88",
    "dim": "2", "bold": "1",
}


def want_colour(stream=None):
    """True when `stream` (default stdout) is a terminal and NO_COLOR is not set."""
    stream = stream or sys.stdout
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


def format_table(columns, rows, colour=False, gap=2):
    """Return `rows` under a header as aligned text. `columns`: [(name, 'l' | 'r'), ...]."""
    cells = [[c if type(c) is str else c[0] for c in col] for col in zip(*rows, strict=True)] if rows else None
    styles = {}
    if colour and rows:
        for i, col in enumerate(zip(*rows, strict=True)):
            if any(type(c) is not str for c in col):
                styles[i] = [None if type(c) is str else c[1] for c in col]
    return format_columns(columns, cells or [[] for _ in columns], styles, colour, gap)


def format_columns(columns, cells, styles=None, colour=False, gap=2):
    """Return a table given column by column: `cells[i]` the strings of column i (all columns of
    equal length), `styles` {i: [style or None per row]} for the styled ones (ANSI colours,
    emitted only when `colour`). Widths come from the columns; each row is then one %-format
    (padding done in C): ~3x faster than cell by cell at 100,000 rows x 20 columns."""
    if len(cells) != len(columns):
        raise ValueError(f"{len(cells)} columns of cells for {len(columns)} headers")
    sep = " " * gap
    specs = []
    names = []
    cols = []
    for i, ((name, just), col) in enumerate(zip(columns, cells, strict=True)):
        width = max(len(name), max(map(len, col), default=0))
        names.append(name.rjust(width) if just == "r" else name.ljust(width))
        style = styles.get(i) if colour and styles else None
        if style is None:
            specs.append(("%%%ds" if just == "r" else "%%-%ds") % width)
        else:  # pad first, then colour: the escape codes must not count in the width
            pad = str.rjust if just == "r" else str.ljust
            col = [pad(s, width) if st is None else f"\x1b[{_SGR[st]}m{pad(s, width)}\x1b[0m"
                   for s, st in zip(col, style, strict=True)]
            specs.append("%s")
        cols.append(col)
    head = sep.join(names).rstrip()
    fmt = sep.join(specs)
    out = [f"\x1b[1m{head}\x1b[0m" if colour else head]
    out.extend((fmt % row).rstrip() for row in zip(*cols, strict=True))
    return "\n".join(out)
