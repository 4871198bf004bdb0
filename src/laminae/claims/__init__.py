"""Claims: the seeds' findings as checkable statements, judged on every run.

A claim is data in an experiment's config group (`<name>.claims`, defaults in
`conf/<name>/default.yaml`): where it comes from (`seed`), what it says (`says`), the seed's own
layer numbers beside a relative depth band, and a predicate `kind` with its thresholds. The
experiment's `measure` hook turns its metrics into per-layer series and samples
(`laminae.series`); the predicates judge them with the run's uncertainty.

    >>> results = evaluate_claims(claims, measurements)           # one ClaimResult per claim
    >>> results[0].verdict, results[0].measured
    ('holds', 'RSA Q-K 0.83 to 0.95; ...')

- `kinds`: the predicate kinds, their parameters, wording and figure references (no NumPy);
- `config`: the config checks (one-line ConfigError naming the key);
- `predicates`: the rules (docs/EXPERIMENTS.md, "Claims", states each precisely);
- `report`: claims.tsv, the one-screen summary, the verdict table figure, the sweep's matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from laminae.claims.kinds import KINDS, expected_text, layers_text, references

__all__ = ["CLAIMS_FILES", "KINDS", "ClaimResult", "evaluate_claims", "expected_text", "references"]

TABLE_FILENAME = "claims.tsv"
SUMMARY_FILENAME = "summary.txt"
FIGURE_NAME = "claims"
#: What a claims stage writes into its `claims/` folder, besides config.yaml.
CLAIMS_FILES = (TABLE_FILENAME, SUMMARY_FILENAME, f"{FIGURE_NAME}.png", f"{FIGURE_NAME}.pdf")


@dataclass(frozen=True)
class ClaimResult:
    """One row of claims.tsv."""

    claim: str          # the claim's id
    seed: str
    says: str
    seed_layers: str    # the seed's layers ("6-29 of 36"), "" when it names none
    layers: str         # the layers of this run the claim asked ("1-4 of 6")
    expected: str       # the predicate in words, with its thresholds
    measured: str       # the headline numbers
    verdict: str        # holds | fails | undecided | not applicable
    decided_by: str     # the numbers that decided it, or why it cannot be asked

    COLUMNS = ("claim", "seed", "says", "seed_layers", "layers", "expected", "measured", "verdict", "decided_by")


def evaluate_claims(claims: Sequence[Mapping[str, Any]], measurements: Mapping[str, Any]) -> list[ClaimResult]:
    """Every claim judged on `measurements` ({name: Series | Sample}, from a `measure` hook)."""
    from laminae.claims.predicates import evaluate
    from laminae.series import Series

    depths = {m.n_layers for m in measurements.values() if isinstance(m, Series)} or \
        {m.n_layers for m in measurements.values()}
    n_layers = max(depths) if depths else 0
    results = []
    for claim in claims:
        outcome = evaluate(claim, measurements, n_layers)
        results.append(ClaimResult(claim=claim["id"], seed=str(claim["seed"]), says=claim["says"],
                                   seed_layers=claim.get("seed_layers", ""),
                                   layers=layers_text(outcome.layers, n_layers), expected=expected_text(claim),
                                   measured=outcome.measured, verdict=outcome.verdict, decided_by=outcome.reason))
    return results
