"""The exported exit rule: a policy and its thresholds, tied to one checkpoint by its hash.

The app's "Thresholds as JSON" button writes it; `whatif`, `predict`, `bench-exit` and `export` read it
(`--rule FILE`). It is untrusted input when it comes from elsewhere: read with a size bound and checked field by
field, as the dataclass declares them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import REQUIRED, TaggedFile, _f
from ..errors import METError
from ..io.limits import read_tagged_file
from .policies import get_policy

FORMAT = "met-exit-rule/1"
MAX_BYTES = 1_000_000


@dataclass
class ExitRule(TaggedFile):
    """Which policy, which thresholds (None: the last exit, which always answers), for which checkpoint."""

    FORMAT = FORMAT
    policy: str = _f(REQUIRED, "The exit policy's name (met_core.analysis.policies).", max_len=64)
    thresholds: list[float | None] = _f(REQUIRED, "One finite threshold per exit; null for the last exit.", max_len=64)
    checkpoint: str = _f("", "The checkpoint's name in the app.", max_len=4096)
    checkpoint_sha256: str = _f("", "The checkpoint's hash (met_core.io.checkpoint.checkpoint_hash).", max_len=64)
    simulated: dict[str, Any] = _f({}, "What the what-if predicted for the rule (simulated, labelled so).")
    note: str = _f("", "What the simulated figures are.", max_len=4096)

    def check(self, what: str) -> None:
        if not self.thresholds:
            raise METError(f"{what}: thresholds must list at least one threshold.")
        get_policy(self.policy)

    def check_checkpoint(self, sha256: str, source: str = "the exit rule") -> None:
        if self.checkpoint_sha256 and self.checkpoint_sha256 != sha256:
            raise METError(
                f"{source} was exported for another checkpoint ({self.checkpoint or 'unnamed'}, sha256 "
                f"{self.checkpoint_sha256[:12]}...); export thresholds for this model."
            )


def read_exit_rule(path: str | Path) -> ExitRule:
    """Read and check an exported exit rule (its fields as declared above); one sentence for anything wrong. Keys
    another version may add are ignored."""
    return read_tagged_file(
        ExitRule, path, "an exit rule", "export the thresholds again", MAX_BYTES, ignore_unknown=True
    )
