"""``python -m framepack_core doctor``: one command that checks what a FramePack install needs and says exactly
what to do about each problem. ``facts`` gathers what the machine has, ``checks`` judges it (pure functions, so
tested with made-up machines), ``tiny_job`` runs a real job with the tiny models, ``report`` prints the table."""

from __future__ import annotations

from pathlib import Path

from framepack_core.doctor.checks import run_checks
from framepack_core.doctor.facts import SystemFacts, gather_facts
from framepack_core.doctor.report import CheckResult, CheckStatus, DoctorReport

__all__ = ["CheckResult", "CheckStatus", "DoctorReport", "SystemFacts", "fast_checks", "run_doctor"]


def run_doctor(models_dir: Path | None, output_dir: Path, device: str = "auto", *, demo: bool = False,
               quick: bool = False) -> DoctorReport:
    """Every check; ``quick`` skips the end-to-end tiny job (the only one that takes more than a moment)."""
    from framepack_core.doctor.tiny_job import NAME, check_tiny_job

    results = run_checks(gather_facts(models_dir, output_dir, device, demo=demo))
    if quick:
        results.append(CheckResult(NAME, CheckStatus.SKIPPED, "quick check: not run"))
    else:
        results.append(check_tiny_job(device, models_dir if demo else None))
    return DoctorReport(tuple(results))


def fast_checks(models_dir: Path | None, output_dir: Path, device: str = "auto", *, demo: bool = False
                ) -> DoctorReport:
    """What ``launch.py`` checks at every start: no model file is read and no job runs."""
    return DoctorReport(tuple(run_checks(gather_facts(models_dir, output_dir, device, demo=demo,
                                                      read_models=False))))
