"""The exported exit rule: a policy and its thresholds, tied to one checkpoint by its hash.

The app's "Thresholds as JSON" button writes it; `whatif`, `predict` and `bench-exit` read it (`--rule FILE`).
It is untrusted input when it comes from elsewhere: read with a size bound and checked field by field.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import METError
from ..io.limits import read_tagged_json
from .policies import get_policy

FORMAT = "met-exit-rule/1"
MAX_BYTES = 1_000_000


@dataclass
class ExitRule:
    """Which policy, which thresholds (None: the last exit, which always answers), for which checkpoint."""

    policy: str
    thresholds: list[float | None]
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    simulated: dict[str, Any] = field(default_factory=dict)  # what the what-if predicted (simulated, labelled so)
    note: str = ""

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=2, allow_nan=False)

    def check_checkpoint(self, sha256: str, source: str = "the exit rule") -> None:
        if self.checkpoint_sha256 and self.checkpoint_sha256 != sha256:
            raise METError(f"{source} was exported for another checkpoint ({self.checkpoint or 'unnamed'}, sha256 "
                           f"{self.checkpoint_sha256[:12]}...); export thresholds for this model.")


def read_exit_rule(path: str | Path) -> ExitRule:
    """Read and check an exported exit rule; one sentence for anything wrong."""
    data = read_tagged_json(path, "an exit rule", FORMAT, "export the thresholds again", MAX_BYTES)
    policy, th = data.get("policy"), data.get("thresholds")
    if not isinstance(policy, str):
        raise METError(f"{path}: policy must be a policy name.")
    get_policy(policy)
    if (not isinstance(th, list) or not th or len(th) > 64
            or not all(t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t))
                       for t in th)):
        raise METError(f"{path}: thresholds must be a list of up to 64 finite numbers (null for the last exit).")
    text = {k: data.get(k, "") for k in ("checkpoint", "checkpoint_sha256", "note")}
    if not all(isinstance(v, str) for v in text.values()):
        raise METError(f"{path}: checkpoint, checkpoint_sha256 and note must be strings.")
    sim = data.get("simulated", {})
    return ExitRule(policy, th, **{k: v[:200] for k, v in text.items()},
                    simulated=sim if isinstance(sim, dict) else {})
