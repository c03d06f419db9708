"""Rewrite the README's benchmark tables from the stored results in ``bench/results/``.

    python bench/report.py            # rewrite README.md in place
    python bench/report.py --check    # exit 1 if README.md differs from the stored results

A README block that a result file owns is fenced by two comments::

    <!-- bench: sample_efficiency_pendulum.md | Real steps to reach and hold the threshold -->
    ...generated...
    <!-- /bench -->

The opening comment names a file in ``bench/results/`` and, after ``|``, the headings of the
sections to copy (all of the file but its ``# title`` line when none is named). The file's
``Command:`` line is copied too, so every figure in the block says which command made it.
Text outside the fences is left alone.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"

FENCE = re.compile(r"(<!-- bench: *(?P<spec>[^>]*?) *-->\n)(?P<body>.*?)(<!-- /bench -->)",
                   re.DOTALL)


class ReportError(Exception):
    """A fence that names a missing file or section."""


def sections(text: str) -> dict[str, str]:
    """``{heading: body}`` of a markdown file's ``##`` sections (body without the heading)."""
    out: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = part.partition("\n")
        out[heading.strip()] = body.strip("\n")
    return out


def render(spec: str, results: Path = RESULTS) -> str:
    """The generated body of one fence."""
    name, *wanted = [s.strip() for s in spec.split("|")]
    path = results / name
    try:
        text = path.read_text()
    except OSError:
        raise ReportError(f"README names {path}, which does not exist; run its benchmark "
                          "first") from None
    command = next((line for line in text.splitlines() if line.startswith("Command:")), None)
    if not wanted:  # the whole file, less its "# title" line (the README has its own heading)
        lines = text.strip("\n").splitlines()
        lines = lines[1:] if lines and lines[0].startswith("# ") else lines
        # the file's own "## sections" would become README sections: bold lines instead
        lines = [f"**{ln[3:].strip()}**" if ln.startswith("## ") else ln for ln in lines]
        body = "\n".join(lines).strip("\n")
    else:
        found = sections(text)
        missing = [w for w in wanted if w not in found]
        if missing:
            raise ReportError(f"{path} has no section {missing[0]!r}; it has: "
                              f"{', '.join(found)}")
        body = "\n\n".join(f"**{w}**\n\n{found[w]}" for w in wanted)
        if command and command not in body:
            body += "\n\n" + command
    return body + "\n"


def rewrite(readme: str, results: Path = RESULTS) -> str:
    """``readme`` with every fence's body regenerated."""
    return FENCE.sub(lambda m: m.group(1) + render(m.group("spec"), results) + m.group(4),
                     readme)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    p.add_argument("--readme", default=str(README))
    args = p.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    try:
        new = rewrite(old)
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    n = len(FENCE.findall(old))
    if args.check:
        print(f"{n} blocks: " + ("up to date" if new == old else "README differs from results"))
        return 0 if new == old else 1
    path.write_text(new)
    print(f"rewrote {n} blocks of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
