"""What a check found, and the report of all of them: a readable table, JSON for scripts, an exit status."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from enum import Enum
from typing import Any


class CheckStatus(str, Enum):
    OK = "ok"
    WARNING = "warning"  # works, but slower, or needs something soon (a download); the fix says what
    FAILED = "failed"  # generating will not work until the fix is done
    SKIPPED = "skipped"  # does not apply here (no NVIDIA GPU: no driver to check), or --quick


@dataclass(frozen=True)
class CheckResult:
    """One check: ``found`` says what is there, ``fix`` (for a warning or a failure) exactly what to do."""

    name: str
    status: CheckStatus
    found: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status.value, "found": self.found, "fix": self.fix}


@dataclass(frozen=True)
class DoctorReport:
    results: tuple[CheckResult, ...]

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(result for result in self.results if result.status == CheckStatus.FAILED)

    @property
    def warnings(self) -> tuple[CheckResult, ...]:
        return tuple(result for result in self.results if result.status == CheckStatus.WARNING)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": not self.failed, "checks": [result.to_dict() for result in self.results]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, width: int = 110) -> str:
        """Check, status and what was found, one row each; the fixes follow the row they belong to."""
        name_width = max(len(result.name) for result in self.results)
        status_width = max(len(result.status.value) for result in self.results)
        found_width = max(20, width - name_width - status_width - 4)
        lines = []
        for result in self.results:
            found = textwrap.wrap(result.found, found_width) or [""]
            lines.append(f"{result.name:<{name_width}}  {result.status.value.upper():<{status_width}}  {found[0]}")
            indent = " " * (name_width + status_width + 4)
            lines += [indent + more for more in found[1:]]
            if result.fix and result.status in (CheckStatus.WARNING, CheckStatus.FAILED):
                lines += textwrap.wrap("Fix: " + result.fix, found_width + len(indent), initial_indent=indent,
                                       subsequent_indent=indent + "     ", break_on_hyphens=False,
                                       break_long_words=False)
        failed, warned = len(self.failed), len(self.warnings)
        if failed:
            lines.append(f"\n{failed} check(s) failed: generating will not work until the fixes above are done.")
        elif warned:
            lines.append(f"\nNo failures; {warned} warning(s) above.")
        else:
            lines.append("\nEverything checked is in order.")
        return "\n".join(lines)
