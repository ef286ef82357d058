"""Generated sections of ``docs/results.md``: the report scripts write their tables between markers.

A generated section is the text between two HTML comments (invisible when the markdown is rendered)::

    <!-- begin: NAME -->
    ...tables and the machine line, as the script printed them...
    <!-- end: NAME -->

Everything outside the markers (headings, the interpretation of the numbers) is written by hand and
never touched.  Each report script takes ``--write-doc`` (default off: print only), which replaces
its section(s) with what it just printed; a section that is not in the file yet is added at its end
(move it by hand once, it stays where it is put).  Writes are atomic: the new text goes to a
temporary file beside the document, which then replaces it (``os.replace``), so an error midway
leaves the document as it was.

Usage in a report script::

    import results_doc
    results_doc.add_arguments(ap)                  # --write-doc, --doc PATH
    ...
    results_doc.maybe_write(args, {"report": markdown})
"""
import datetime
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lmfit3d.paths import atomic_write  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results.md"
NAME_RE = re.compile(r"[A-Za-z0-9_.]+\Z")


def _check_name(name):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"section name must be letters, digits, '_' or '.', got {name!r}")


def markers(name):
    """(begin, end) marker lines of section ``name``."""
    _check_name(name)
    return f"<!-- begin: {name} -->", f"<!-- end: {name} -->"


def _span(text, name):
    """(start of the begin marker, end of the end marker) of ``name`` in ``text``, or None when the
    section is missing; ValueError when its markers are unpaired, repeated or out of order."""
    begin, end = markers(name)
    nb, ne = text.count(begin), text.count(end)
    if nb == ne == 0:
        return None
    if nb != 1 or ne != 1:
        raise ValueError(f"section {name!r}: {nb} begin and {ne} end markers (want one of each)")
    b = text.index(begin)
    e = text.index(end)
    if e < b:
        raise ValueError(f"section {name!r}: end marker before the begin marker")
    return b, e + len(end)


def read_section(name, path=RESULTS):
    """The text between the markers of ``name`` (without the marker lines), or None if missing."""
    text = Path(path).read_text(encoding="utf-8")
    span = _span(text, name)
    if span is None:
        return None
    begin, end = markers(name)
    return text[span[0] + len(begin):span[1] - len(end)].strip("\n")


def section_names(path=RESULTS):
    """Names of the sections in the document, in order."""
    text = Path(path).read_text(encoding="utf-8")
    return re.findall(r"<!-- begin: ([A-Za-z0-9_.]+) -->", text)


def render(text, sections):
    """``text`` with each section of ``sections`` (name -> markdown) replaced, or appended at the end
    when missing; returns the new text."""
    for name, markdown in sections.items():
        begin, end = markers(name)
        body = str(markdown).strip("\n")
        if begin in body or end in body or "<!-- begin:" in body or "<!-- end:" in body:
            raise ValueError(f"section {name!r}: the markdown holds a section marker")
        block = f"{begin}\n{body}\n{end}"
        span = _span(text, name)
        if span is None:
            text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"
        else:
            text = text[:span[0]] + block + text[span[1]:]
    return text


def _replace_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file renamed over it (``lmfit3d.paths.atomic_write``)."""
    with atomic_write(Path(path), "w") as fh:
        fh.write(text)


def write_sections(sections, path=RESULTS):
    """Replace (or append) several sections of ``path`` in one atomic write.

    ``sections``: dict name -> markdown.  Returns the names whose text changed.  The file is only
    rewritten when something changed; it is created when missing.
    """
    path = Path(path)
    for name in sections:
        _check_name(name)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    new = render(old, sections)
    changed = [n for n in sections if _span(old, n) is None
               or old[slice(*_span(old, n))] != new[slice(*_span(new, n))]]
    if new != old:
        _replace_atomically(path, new)
    return changed


def write_section(name, markdown, path=RESULTS):
    """Replace the text between ``<!-- begin: name -->`` and ``<!-- end: name -->`` in ``path`` by
    ``markdown`` (atomically), adding the section at the end of the file when it is missing.

    Raises ValueError for a name other than letters, digits, '_' and '.' (marker characters), for
    markers that are unpaired or repeated, and for markdown that holds a marker.  Returns True when
    the section's text changed.
    """
    return bool(write_sections({name: markdown}, path))


# --------------------------------------------------------------------------------------------
# The report scripts' side: --write-doc
# --------------------------------------------------------------------------------------------

def add_arguments(parser):
    """Add ``--write-doc`` and ``--doc PATH`` to an argparse parser."""
    g = parser.add_argument_group("docs/results.md")
    g.add_argument("--write-doc", action="store_true",
                   help="also write the printed tables into this script's section(s) of docs/results.md "
                        "(default: print only)")
    g.add_argument("--doc", default=str(RESULTS), help="the document --write-doc writes (default: %(default)s)")
    return parser


def parser(doc):
    """An argparse parser for a report script: its description the first paragraph of ``doc`` (the
    script's docstring), with ``--write-doc`` and ``--doc`` (:func:`add_arguments`)."""
    import argparse
    return add_arguments(argparse.ArgumentParser(description=doc.split("\n\n")[0]))


def positive_int(text):
    """argparse type: an int >= 1 (a count of faces, renders, frames)."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _git(*args):
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_line(extra=""):
    """``Machine: CPU, Python x, NumPy y[, Numba z]`` (+ ``extra``) for scripts that time things."""
    import platform
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"Python {platform.python_version()}"]
    for mod in ("numpy", "numba"):
        m = sys.modules.get(mod)
        if m is not None:
            parts.append(f"{'NumPy' if mod == 'numpy' else 'Numba'} {m.__version__}")
    return "Machine: " + ", ".join(parts) + (f", {extra}" if extra else "") + "."


def provenance(argv=None):
    """One line naming the command, date and commit that produced a section."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    args = [a for a in argv[1:] if a != "--write-doc"]
    cmd = " ".join(["python", str(script), *args])
    commit = _git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/results.md")
    tree = f"commit {commit}" + (", uncommitted changes" if dirty else "")       # the document itself aside
    return f"_Written by `{cmd}` on {datetime.date.today().isoformat()} ({tree})._"


def maybe_write(args, sections, argv=None):
    """With ``--write-doc``: write ``sections`` (name -> markdown) into ``args.doc``, each headed by
    the :func:`provenance` line; reports on stderr which sections changed or were added."""
    if not getattr(args, "write_doc", False):
        return []
    path = Path(args.doc)
    line = provenance(argv)
    existing = set(section_names(path)) if path.exists() else set()
    changed = write_sections({n: f"{line}\n\n{md.strip()}" for n, md in sections.items()}, path)
    for n in sections:
        state = "added at the end (move it to its place)" if n not in existing else (
            "updated" if n in changed else "unchanged")
        print(f"{path}: section {n} {state}", file=sys.stderr)
    return changed
