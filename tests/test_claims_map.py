"""tests/README.md maps the README's claims to tests: every test it names must exist."""

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_named_in_the_claims_map_exists():
    text = (TESTS / "README.md").read_text()
    defined = {path.name: set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
               for path in TESTS.glob("test_*.py")}
    named, current = [], None
    for cell in re.findall(r"`([^`]+)`", text):
        for ref in re.finditer(r"(?:(test_\w+\.py))?::(test_\w+)", cell):
            current = ref.group(1) or current
            named.append((current, ref.group(2)))
        if re.fullmatch(r"test_\w+\.py", cell):
            current = cell
    assert len(named) > 40
    missing = [f"{file}::{name}" for file, name in named if name not in defined.get(file, set())]
    assert not missing, f"tests/README.md names tests that do not exist: {missing}"


# A sentence of the README (or of docs/) states a behaviour when it says one of these words; each
# such sentence is listed in tests/README.md's last table by its first words, with where it is checked.
CLAIM_WORDS = re.compile(r"\b(tested|a test|the test|tests|checked|guarantee[sd]?|verif(?:y|ies|ied)|refuse[sd]?|"
                         r"resumes?|bit-identical|byte-identical|bit for bit|same bytes|never|always)\b", re.I)
KEY_WORDS = 8


def claim_sentences(markdown: str) -> list[str]:
    """The sentences of ``markdown`` that state a behaviour: prose only (code blocks, tables and
    headings aside), a list item or a blank line starts a new paragraph."""
    paragraphs, current, fenced = [], [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        starts = (fenced or not line.strip() or line.startswith(("|", "#", "```"))
                  or re.match(r"\s*(?:[-*]|\d+\.)\s", line))
        if starts and current:
            paragraphs.append(" ".join(current))
            current = []
        if not (fenced or not line.strip() or line.startswith(("|", "#", "```"))):
            current.append(re.sub(r"^\s*(?:[-*]|\d+\.)\s+", "", line.strip()))
    if current:
        paragraphs.append(" ".join(current))
    sentences = [s for p in paragraphs for s in re.split(r"(?<=[.!?])\s+(?=[A-Z*`(\"])", p)]
    return [s for s in sentences if CLAIM_WORDS.search(s)]


def sentence_key(sentence: str) -> str:
    """A sentence's first words, lower case, without markdown: how the map names it."""
    return " ".join(re.findall(r"[\w.+/<>=@-]+", sentence.replace("**", "").lower())[:KEY_WORDS])


def claim_map(text: str) -> dict[str, str]:
    """tests/README.md's last table: {sentence key: where it is checked}."""
    section = text.split("## Every claim sentence of the README", 1)[1]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {key.strip().strip("`"): where.strip() for key, where in rows[1:]}


def unmapped(documents: dict[str, str], mapped: dict[str, str]) -> tuple[list[str], list[str]]:
    """(claim sentences with no row, rows whose sentence is gone)."""
    keys = {sentence_key(s): f"{name}: {s[:120]}" for name, text in documents.items() for s in claim_sentences(text)}
    return [keys[k] for k in sorted(keys) if k not in mapped], sorted(k for k in mapped if k not in keys)


def _documents() -> dict[str, str]:
    docs = sorted((TESTS.parent / "docs").rglob("*.md")) if (TESTS.parent / "docs").is_dir() else []
    return {"README.md": (TESTS.parent / "README.md").read_text(),
            **{str(p.relative_to(TESTS.parent)): p.read_text() for p in docs}}


def test_every_claim_sentence_of_the_readme_is_mapped():
    """Each sentence of the README that states a behaviour has a row in tests/README.md naming a
    test that exists (or saying which measurement it reports); no row outlives its sentence."""
    text = (TESTS / "README.md").read_text()
    mapped = claim_map(text)
    missing, stale = unmapped(_documents(), mapped)
    assert not missing, ("README sentences that state a behaviour but have no row in tests/README.md's "
                         f"'Every claim sentence' table (add one naming its test): {missing}")
    assert not stale, f"rows of tests/README.md whose sentence is no longer in the README: {stale}"
    e2e = set(re.findall(r"^def (_\w+)", (TESTS / "test_pipeline_e2e.py").read_text(), re.M))
    for key, where in mapped.items():
        tests = re.findall(r"`(?:test_\w+\.py)?::test_\w+`|`test_\w+\.py`", where)
        helpers = re.findall(r"e2e `(_\w+)`", where)
        assert tests or helpers or where.startswith("described:"), f"{key!r}: names no test ({where!r})"
        assert set(helpers) <= e2e, f"{key!r}: no such end-to-end check {set(helpers) - e2e}"
        for path in re.findall(r"`(benchmarks/results/[^`*]+)`", where):
            assert (TESTS.parent / path).is_file(), f"{key!r}: {path} does not exist"


def test_a_new_claim_sentence_or_a_stale_row_is_caught():
    """The check above on a README with one claim added and one claim reworded."""
    readme = (TESTS.parent / "README.md").read_text()
    mapped = claim_map((TESTS / "README.md").read_text())
    added = readme + "\nA run that loses power never leaves a half-written detector behind.\n"
    missing, stale = unmapped({"README.md": added}, mapped)
    assert missing == ["README.md: A run that loses power never leaves a half-written detector behind."] and not stale
    first = next(s for s in claim_sentences(readme) if s in readme)  # one that sits on one line
    missing, stale = unmapped({"README.md": readme.replace(first, "Now: " + first)}, mapped)
    assert [m.split(": ", 1)[1][:20] for m in missing] == [("Now: " + first)[:20]]
    assert stale == [sentence_key(first)]
