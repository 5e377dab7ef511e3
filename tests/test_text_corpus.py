"""scripts/embedded_build/corpus.py: the corpus builder (extraction, prose filter, leak filter, manifest), offline.

Fetching is not run here (it needs the registries); `build(..., roots=...)` reads sources already unpacked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.embedded_build import corpus as tc

ROOT = Path(__file__).resolve().parents[1]

HELD = "gregarious bird having plumage with dark metallic gloss; builds nests around dwellings and other structures"


def test_html_pod_and_plain_paragraphs():
    page = ("<html><head><style>p {color: red}</style><script>var x = 1;</script></head><body>"
            "<h1>Title words</h1><p>The first   paragraph\nof prose.</p><pre>code line = 1</pre>"
            "<p>A second one with <code>inline()</code> code.</p></body></html>")
    assert tc.paragraphs(page, "html") == ["Title words", "The first paragraph of prose.", "A second one with code."]
    pod = "=head1 NAME\n\nB<perlfoo> is a C<thing> that works.\n\n    verbatim code;\n\nPlain text here.\n"
    assert tc.paragraphs(pod, "pod") == ["perlfoo is a thing that works.", "Plain text here."]
    assert tc.paragraphs("one\ntwo\n\n\nthree", "plain") == ["one two", "three"]
    with pytest.raises(ValueError, match="kind='rst'"):
        tc.paragraphs("x", "rst")


def test_prose_filter():
    assert tc.is_prose("The quick brown fox jumps over the lazy dog.")
    assert not tc.is_prose("Too short here.")
    assert not tc.is_prose("x = f(y); return a[i] + b[j] * 2; // code")


def test_leak_filter_drops_held_out_definitions_only():
    leak = tc.LeakFilter([HELD, "syrup prepared from corn", "a ship"])
    assert leak.leaks(f"The starling is a {HELD.upper()} and sings.")  # case and punctuation do not matter
    half = " ".join(HELD.split()[:11])  # 4 of its 8 word 8-grams: half
    assert leak.leaks(f"It is a {half} bird.")
    assert not leak.leaks(f"It is a {' '.join(HELD.split()[:10])} bird.")  # 3 of 8: less than half
    assert not leak.leaks("A gregarious bird builds nests; its plumage is dark.")  # same words, not the definition
    assert leak.leaks("They sold syrup prepared from corn at the fair.")  # a short definition, verbatim
    assert not leak.leaks("The ship sailed at dawn with a ship's cat aboard.")  # two-word definitions never count


def test_build_writes_corpus_and_manifest_and_refuses_copyleft(tmp_path):
    src = tmp_path / "pkg" / "usr" / "share" / "doc" / "demo"
    src.mkdir(parents=True)
    (src / "a.html").write_text(
        "<p>This page explains how the library stores every record on disk.</p>"
        f"<p>The common starling is a {HELD}.</p><p>short</p>"
        "<p>This page explains how the library stores every record on disk.</p>", encoding="utf-8")
    (src / "skip.txt").write_text("Never read: the include pattern leaves this file out entirely.", encoding="utf-8")
    held = tmp_path / "dev.jsonl"
    held.write_text(json.dumps({"id": "1", "text": f"common starling, Sturnus vulgaris: {HELD}"}) + "\n")
    source = tc.Source("demo", "apt", "demo-doc", "public-domain", "html", r"/usr/share/doc/demo/.*\.html$")
    out = tmp_path / "out"
    manifest = tc.build([source], str(out), str(tmp_path / "cache"), [str(held)], roots={"demo": str(tmp_path / "pkg")})
    assert (out / "corpus.txt").read_text().splitlines() == [
        "This page explains how the library stores every record on disk."]
    assert {(out / f).stat().st_mode & 0o777 for f in ("corpus.txt", "manifest.json")} == {0o644}
    written = json.loads((out / "manifest.json").read_text())
    assert written == manifest
    counts = written["sources"]["demo"]
    assert (counts["files"], counts["paragraphs"], counts["leaks"], counts["duplicates"], counts["short_or_code"]) == (
        1, 1, 1, 1, 1)
    assert written["held_out_definitions"] == 1 and written["words"] == 11
    gpl = tc.Source("gcide", "apt", "dict-gcide", "GPL-2.0-or-later", "plain", r".*")
    with pytest.raises(ValueError, match="'gcide' has licence 'GPL-2.0-or-later'"):
        tc.build([gpl], str(out), str(tmp_path / "cache"), [str(held)], roots={"gcide": str(tmp_path / "pkg")})


def test_sources_are_permissive_and_exclude_wordnet():
    for source in tc.SOURCES:
        assert source.licence in tc.PERMISSIVE and source.registry in ("apt", "pip")
        assert "wordnet" not in source.package and "gcide" not in source.package and source.package != "dict-wn"
    assert len({s.name for s in tc.SOURCES}) == len(tc.SOURCES)


def test_read_corpus_checks_the_manifest(tmp_path):
    src = tmp_path / "pkg" / "doc"
    src.mkdir(parents=True)
    (src / "a.txt").write_text("The library stores every record on disk in pages.\n\n"
                               "Each page holds a header and a list of cells.\n", encoding="utf-8")
    source = tc.Source("demo", "apt", "demo-doc", "MIT", "plain", r"/doc/.*\.txt$")
    out = tmp_path / "out"
    manifest = tc.build([source], str(out), str(tmp_path / "cache"), [], roots={"demo": str(tmp_path / "pkg")})
    lines, read = tc.read_corpus(str(out))
    assert lines == ["The library stores every record on disk in pages.", "Each page holds a header and a list of cells."]
    assert read == manifest and len(manifest["corpus_sha256"]) == 64
    with open(out / "corpus.txt", "a", encoding="utf-8") as handle:
        handle.write("An edited line that the manifest does not know about.\n")
    with pytest.raises(ValueError, match=r"corpus.txt has sha256 .* but .*manifest.json says corpus_sha256 .*"
                                         r"rebuild it with `python -m scripts.embedded_build corpus --out"):
        tc.read_corpus(str(out))
    del manifest["corpus_sha256"]
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match="manifest.json has no corpus_sha256"):
        tc.read_corpus(str(out))
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"has no manifest.json .*scripts/embedded_build/corpus.py"):
        tc.read_corpus(str(out))
