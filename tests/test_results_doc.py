"""bench/results_doc.py: the generated sections of docs/results.md are replaced in place, atomically."""
import argparse
import importlib.util
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def rd():
    spec = importlib.util.spec_from_file_location("results_doc", BENCH / "results_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DOC = """# Results

Prose before.

<!-- begin: alpha -->
| a | b |
|---|---|
| 1 | 2 |
<!-- end: alpha -->

Prose about alpha, by hand.

<!-- begin: beta.no_smooth -->
old beta
<!-- end: beta.no_smooth -->

Closing prose.
"""


@pytest.fixture
def doc(tmp_path):
    p = tmp_path / "results.md"
    p.write_text(DOC)
    return p


def test_replaces_only_its_own_section(rd, doc):
    assert rd.write_section("alpha", "| a | b |\n|---|---|\n| 3 | 4 |\n", doc)
    text = doc.read_text()
    assert text == DOC.replace("| 1 | 2 |", "| 3 | 4 |")
    assert rd.read_section("alpha", doc) == "| a | b |\n|---|---|\n| 3 | 4 |"
    assert rd.read_section("beta.no_smooth", doc) == "old beta"
    assert rd.section_names(doc) == ["alpha", "beta.no_smooth"]
    # the same text again: nothing changes, the file is not rewritten
    mtime = doc.stat().st_mtime_ns
    assert not rd.write_section("alpha", "| a | b |\n|---|---|\n| 3 | 4 |", doc)
    assert doc.stat().st_mtime_ns == mtime


def test_several_sections_in_one_write(rd, doc):
    changed = rd.write_sections({"beta.no_smooth": "new beta", "alpha": "new alpha"}, doc)
    assert sorted(changed) == ["alpha", "beta.no_smooth"]
    assert doc.read_text() == (DOC.replace("| a | b |\n|---|---|\n| 1 | 2 |", "new alpha")
                               .replace("old beta", "new beta"))


def test_missing_section_is_added_at_the_end(rd, doc):
    assert rd.write_section("gamma", "gamma table", doc)
    text = doc.read_text()
    assert text.startswith(DOC.rstrip("\n"))
    assert text.endswith("Closing prose.\n\n<!-- begin: gamma -->\ngamma table\n<!-- end: gamma -->\n")
    assert rd.section_names(doc) == ["alpha", "beta.no_smooth", "gamma"]


def test_missing_file_is_created(rd, tmp_path):
    p = tmp_path / "new.md"
    rd.write_section("alpha", "x", p)
    assert p.read_text() == "<!-- begin: alpha -->\nx\n<!-- end: alpha -->\n"


def test_failed_write_leaves_the_file_intact(rd, doc, monkeypatch):
    """An exception while the new text is written (disk full, interrupt): the document is unchanged
    and no temporary file is left beside it."""
    before = doc.read_bytes()
    real_fdopen = os.fdopen

    class Boom(OSError):
        pass

    def failing_fdopen(fd, *a, **kw):
        fh = real_fdopen(fd, *a, **kw)
        real_write = fh.write

        def write(s):
            real_write(s[: len(s) // 2])          # half of it reaches the temporary file
            raise Boom("no space left on device")
        fh.write = write
        return fh

    monkeypatch.setattr(os, "fdopen", failing_fdopen)
    with pytest.raises(Boom):
        rd.write_section("alpha", "new alpha", doc)
    assert doc.read_bytes() == before
    assert sorted(p.name for p in doc.parent.iterdir()) == ["results.md"]


def test_failed_replace_leaves_the_file_intact(rd, doc, monkeypatch):
    before = doc.read_bytes()

    def no_replace(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(PermissionError):
        rd.write_section("alpha", "new alpha", doc)
    assert doc.read_bytes() == before
    assert sorted(p.name for p in doc.parent.iterdir()) == ["results.md"]


@pytest.mark.parametrize("name", ["a -->", "<!-- x", "a b", "a:b", "a\nb", "", "a-->b", "ä", "a/b", None])
def test_names_with_marker_characters_are_rejected(rd, doc, name):
    before = doc.read_bytes()
    with pytest.raises(ValueError, match="section name"):
        rd.write_section(name, "x", doc)
    assert doc.read_bytes() == before


@pytest.mark.parametrize("broken", [
    "<!-- begin: alpha -->\nx\n",                                                   # no end
    "<!-- end: alpha -->\nx\n<!-- begin: alpha -->\n",                               # out of order
    "<!-- begin: alpha -->\n<!-- end: alpha -->\n<!-- begin: alpha -->\n<!-- end: alpha -->\n",  # twice
])
def test_malformed_markers_are_reported(rd, tmp_path, broken):
    p = tmp_path / "r.md"
    p.write_text(broken)
    with pytest.raises(ValueError, match="alpha"):
        rd.write_section("alpha", "x", p)
    assert p.read_text() == broken


def test_markdown_holding_a_marker_is_rejected(rd, doc):
    with pytest.raises(ValueError, match="marker"):
        rd.write_section("alpha", "x\n<!-- end: alpha -->\ny", doc)


def test_write_doc_flag(rd, doc):
    ap = rd.add_arguments(argparse.ArgumentParser())
    off = ap.parse_args([])
    assert off.write_doc is False and Path(off.doc) == rd.RESULTS
    assert rd.maybe_write(off, {"alpha": "never written"}) == []          # default: print only
    on = ap.parse_args(["--write-doc", "--doc", str(doc)])
    assert rd.maybe_write(on, {"alpha": "| 5 |"}, argv=["bench/some_report.py", "--n", "3", "--write-doc"]) == ["alpha"]
    body = rd.read_section("alpha", doc)
    assert body.startswith("_Written by `python bench/some_report.py --n 3` on ")
    assert body.endswith("\n\n| 5 |")
    assert rd.read_section("beta.no_smooth", doc) == "old beta"


def test_results_md_sections_are_well_formed(rd):
    """Every section of the real docs/results.md has one begin and one end marker, in order."""
    names = rd.section_names()
    assert len(names) == len(set(names)) >= 1
    text = rd.RESULTS.read_text()
    assert text.count("<!-- begin:") == text.count("<!-- end:") == len(names)
    for n in names:
        assert rd.read_section(n) is not None


def test_report_parser_and_positive_counts(rd, capsys):
    """A report script's parser: its docstring's first paragraph, --write-doc, and counts >= 1."""
    ap = rd.parser("First paragraph.\n\nMore text.")
    ap.add_argument("--faces", type=rd.positive_int, default=3)
    assert ap.description == "First paragraph."
    args = ap.parse_args(["--faces", "5", "--write-doc"])
    assert args.faces == 5 and args.write_doc
    for bad, why in (("0", "must be >= 1"), ("x", "want an integer")):
        with pytest.raises(SystemExit):
            ap.parse_args(["--faces", bad])
        assert why in capsys.readouterr().err
