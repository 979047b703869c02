"""Results pages: one Markdown page per notebook, generated from the files that notebook wrote, never typed.

`make figures` writes docs/results/<notebook>.md after each notebook of the reference run: the notebook's
conclusion, every table it saved (its Markdown rendering, or the CSV itself), every figure, the flags its results
carry and a summary of their provenance (commit, model, seeds, machine). A number on a page is a number in a file
of figures/; a test regenerates each page from the committed files and compares, so prose cannot drift from them.
A file whose checksum no longer matches its provenance record (edited by hand) stops the page with an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .outputs import RECORD_SUFFIX, atomic_output, sha256_file
from .places import PAGES, ROOT

MAX_ROWS = 40  # a longer CSV is shown in part on the page; the file has the rest


def records(folder: Path, notebook: str) -> list[dict]:
    """The provenance records of the files `notebook` wrote into `folder`, in the order it wrote them."""
    found = []
    for path in sorted(folder.glob(f"*{RECORD_SUFFIX}")):
        record = json.loads(path.read_text())
        if record.get("notebook") != notebook:
            continue
        target = folder / record["file"]
        if not target.exists():
            raise FileNotFoundError(f"{path} records {record['file']}, which is not in {folder}")
        if record.get("sha256") not in (None, sha256_file(target)):
            raise ValueError(f"{target} no longer matches its provenance record {path.name} (edited after the run "
                             "wrote it): a results page shows only what a run wrote; re-run `make figures`")
        found.append(record)
    return sorted(found, key=lambda r: (r.get("created", ""), r["file"]))


def flags(recs: list[dict]) -> list[str]:
    """The degenerate-result flags the records carry, each once, in the order they were written."""
    return list(dict.fromkeys(f for r in recs for f in r.get("flags") or []))


def results_page(folder: Path, notebook: str, link: str) -> str:
    """The page of one notebook's results in `folder`; `link` is the folder as seen from where the page lives."""
    recs = records(folder, notebook)
    if not recs:
        raise FileNotFoundError(f"{folder} holds no results of {notebook}")
    files = {r["file"] for r in recs}
    out = [f"# {notebook}: results", "",
           f"Generated from the files in `{_shown(folder)}` that `{notebook}` wrote; do not edit (a test regenerates "
           "this page from them): every number on it is one those files hold.", "", *_provenance(recs), ""]
    if said := flags(recs):
        out += ["## Flags", "", *[f"- ⚠ {f}" for f in said], ""]
    for name in sorted(f for f in files if f.startswith("conclusion") and f.endswith(".md")):
        out += ["## What it shows", "", (folder / name).read_text().strip(), ""]
    for r in recs:
        name = r["file"]
        stem, suffix = name.rsplit(".", 1)
        if name.startswith("conclusion"):
            continue
        if suffix == "csv":
            out += [f"## {stem}", "", *_table(folder, stem, files), "", f"File: [{name}]({link}/{name})", ""]
        elif suffix == "png":
            out += [f"## {stem} (figure)", "", f"![{stem}]({link}/{name})", ""]
    return "\n".join(out).rstrip() + "\n"


def _table(folder: Path, stem: str, files: set[str]) -> list[str]:
    if f"{stem}.md" in files:  # the notebook's own rendering: its header and footnotes belong with it
        return [(folder / f"{stem}.md").read_text().strip()]
    df = pd.read_csv(folder / f"{stem}.csv")
    shown = df.head(MAX_ROWS).to_markdown(index=False)
    more = ["", f"… {len(df) - MAX_ROWS} more rows in the CSV."] if len(df) > MAX_ROWS else []
    return [shown, *more]


def _provenance(recs: list[dict]) -> list[str]:
    def one(key):  # each distinct value once, in the order the files were written
        return ", ".join(dict.fromkeys(str(r.get(key)) for r in recs))

    machines = {json.dumps(r.get("machine"), sort_keys=True) for r in recs}
    m = json.loads(sorted(machines)[0]) if machines else {}
    where = (f"{m.get('cpu')} ({m.get('cores')} cores; bf16: {', '.join(m.get('bf16') or []) or 'none'}), "
             f"torch {m.get('torch')}, transformers {m.get('transformers')}, trl {m.get('trl')}") if m else "?"
    created = sorted(r.get("created", "") for r in recs)
    return [f"- profile {one('profile')} · model {one('model')} · seeds {one('seeds')} · λ {one('lam')} · rounds "
            f"{one('rounds')}",
            f"- commit {one('commit')} · written {created[0]} to {created[-1]}",
            f"- machine: {where}" + (f" (and {len(machines) - 1} other)" if len(machines) > 1 else "")]


def _shown(folder: Path) -> str:
    try:
        return str(folder.resolve().relative_to(ROOT))
    except ValueError:
        return str(folder)


def write_page(folder: Path, notebook: str, pages: Path = PAGES) -> Path:
    """Write docs/results/<notebook>.md from the notebook's files in `folder`."""
    path = pages / f"{notebook}.md"
    link = Path(os.path.relpath(folder.resolve(), pages.resolve())).as_posix()
    text = results_page(folder, notebook, link)
    with atomic_output(path, force=True, provenance={"notebook": notebook, "from": _shown(folder)}) as tmp:
        tmp.write_text(text)
    return path
