"""Write the measured sections of docs/results.md from the reproduction runs' ``results.json`` files.

docs/results.md keeps its prose (summary, setup, guidance) by hand; every table and plot in it is generated
here, between ``<!-- begin generated: TAG -->`` and ``<!-- end generated: TAG -->`` markers, from the
``results.json`` that ``benchmarks/reproduce.py`` wrote for ``TAG`` (``digits-mlp``, ``fashion-mnist-cnn``, ...).
Nothing in a generated section is typed by hand, so the page cannot drift from the runs; the slow test
``tests/test_results_page.py`` reruns the digits/MLP command and compares its section with the page.

Example::

    python benchmarks/results_page.py --runs /tmp/runs --page docs/results.md   # runs/<TAG>/results.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # the repro_* helpers live beside this script
    sys.path.insert(0, str(_HERE))

from repro_report import command_line, markdown_report, plot_anchored, plot_tradeoff  # noqa: E402

__all__ = ["mask_timing", "page_section", "replace_section", "section_of"]

_BEGIN = "<!-- begin generated: {tag} -->"
_END = "<!-- end generated: {tag} -->"
_TIMING_HEADER = re.compile(r"CPU s")


def _tag(results: dict) -> str:
    s = results["settings"]
    return f"{s['data']}-{s['arch']}"


def page_section(results: dict) -> str:
    """The page's section for one run: its tables (chosen tuning rows only), plot links and command line."""
    tag = _tag(results)
    images = {}
    if "main" in results:
        images["tradeoff"] = f"img/tradeoff-{tag}.png"
    if "anchored" in results:
        images["anchored"] = f"img/anchored-{tag}.png"
    text = markdown_report(results, images, chosen_only=True)
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.MULTILINE)  # one level down
    return text.rstrip("\n") + "\n\n" + command_line(results) + "\n"


def write_plots(results: dict, folder: Path) -> None:
    """Draw the run's plots into ``folder`` under the names :func:`page_section` links to."""
    tag, s = _tag(results), results["settings"]
    title = f"{s['data']}, {s['arch']}"
    if "main" in results:
        plot_tradeoff(results["main"], s["tradeoff_eps"], folder / f"tradeoff-{tag}.png", title=title)
    if "anchored" in results:
        plot_anchored(results["anchored"], folder / f"anchored-{tag}.png", title=title)


def section_of(page: str, tag: str) -> str:
    """The generated text for ``tag`` in ``page`` (between its markers); ValueError if the markers are missing."""
    begin, end = _BEGIN.format(tag=tag), _END.format(tag=tag)
    if page.count(begin) != 1 or page.count(end) != 1:
        raise ValueError(f"the page must hold exactly one {begin!r} ... {end!r} pair")
    return page.split(begin, 1)[1].split(end, 1)[0].strip("\n") + "\n"


def replace_section(page: str, tag: str, text: str) -> str:
    """``page`` with the generated text for ``tag`` replaced by ``text``."""
    section_of(page, tag)  # checks the markers
    begin, end = _BEGIN.format(tag=tag), _END.format(tag=tag)
    head, rest = page.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{begin}\n{text.strip(chr(10))}\n{end}{tail}"


def mask_timing(text: str) -> str:
    """``text`` with wall-clock numbers blanked (the command line's seconds and every "CPU s" column).

    Wall-clock time depends on the machine's load; everything else a run prints is deterministic.
    """
    text = re.sub(r"(Command: `[^`]*`; )\d+ s on", r"\1… s on", text)
    out, columns = [], []
    for line in text.splitlines():
        if not line.startswith("|"):
            columns = []
            out.append(line)
            continue
        cells = line.strip().strip("|").split("|")
        if not columns:
            columns = [i for i, c in enumerate(cells) if _TIMING_HEADER.search(c)]
        elif not set(line) <= set("|-: "):
            cells = ["…" if i in columns else c for i, c in enumerate(cells)]
            line = "|" + "|".join(cells) + "|"
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def main(argv: list[str] | None = None) -> int:
    """Regenerate every marked section of the page from ``--runs/<TAG>/results.json``; return 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="folder holding one <TAG>/results.json per run")
    p.add_argument("--page", type=Path, default=_HERE.parent / "docs" / "results.md", help="the page to update")
    args = p.parse_args(argv)
    page = args.page.read_text()
    tags = re.findall(r"<!-- begin generated: ([\w-]+) -->", page)
    for tag in tags:
        results = json.loads((args.runs / tag / "results.json").read_text())
        page = replace_section(page, tag, page_section(results))
        write_plots(results, args.page.parent / "img")
        print(f"{tag}: regenerated from {args.runs / tag / 'results.json'}")
    args.page.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
