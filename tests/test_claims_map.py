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
