"""The durations the README states, checked against the commands that take them.

The stack test times `make up` and the drift demo; `.ci/run` times `make test` and calls
`python -m tests.durations "make test" SECONDS`. A figure more than half again as long as the
README says fails, and so does one less than half as long (the README's figure is then twice too
high), so a stale duration cannot stay in the README either way.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SLACK = 1.5  # room for a slower run of the same machine
FLOOR = 0.5  # a run this much faster than the README says: the README's figure is stale

# Where the README states each duration ("about 6 minutes", "about a minute").
STATED = {
    "make test": r"make test .*?\(about (?P<minutes>a|[\d.]+) minutes?\b",
    "make bench-smoke": r"make bench-smoke .*?\(about (?P<minutes>a|[\d.]+) minutes?\b",
    "make up": r"first serving champion takes about (?P<minutes>a|[\d.]+) minutes?",
    "make drift-demo": r"timing each step \(about (?P<minutes>a|[\d.]+) minutes? here",
    "make concept-demo": r"concept-demo\b.*?each step timed \(about (?P<minutes>a|[\d.]+) minutes? here",
}


def stated_minutes(command: str, readme: str | None = None) -> float:
    """The minutes the README says `command` takes."""
    text = (README.read_text() if readme is None else readme).replace("\n", " ")
    found = re.search(STATED[command], text)
    if found is None:
        raise LookupError(f"the README states no duration for {command!r} (pattern {STATED[command]!r})")
    return 1.0 if found["minutes"] == "a" else float(found["minutes"])


def within_stated(command: str, seconds: float, readme: str | None = None) -> str | None:
    """None when `seconds` is within the README's figure for `command`, else what is wrong."""
    minutes = stated_minutes(command, readme)
    if FLOOR * 60 * minutes <= seconds <= SLACK * 60 * minutes:
        return None
    return (
        f"{command} took {seconds / 60:.1f} minutes, but the README says about {minutes:g}: "
        f"measure it again and correct the README"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print('usage: python -m tests.durations "make test" SECONDS', file=sys.stderr)
        return 2
    command, seconds = argv[0], float(argv[1])
    problem = within_stated(command, seconds)
    stated = stated_minutes(command)
    print(problem or f"{command}: {seconds / 60:.1f} minutes, within the README's about {stated:g}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
