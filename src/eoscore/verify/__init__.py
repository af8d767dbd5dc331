"""``eoscore verify``: chaos-test a pipeline's exactly-once guarantee.

Write a function ``f(workdir: Path) -> VerifyTarget`` next to the pipeline and
run ``eoscore verify mymodule:f``; docs/guide.md shows a complete target.
"""

from eoscore.verify.report import Findings, VerifyReport, compare
from eoscore.verify.runner import (
    ChaosOptions,
    JobFailedError,
    exclude_late,
    inject_duplicates,
    run_verification,
)
from eoscore.verify.target import (
    DEFAULT_FAILPOINTS,
    SINK_FAILPOINTS,
    TargetError,
    VerifyTarget,
    check_failpoints,
    load_target,
)

__all__ = [
    "DEFAULT_FAILPOINTS",
    "SINK_FAILPOINTS",
    "ChaosOptions",
    "Findings",
    "JobFailedError",
    "TargetError",
    "VerifyReport",
    "VerifyTarget",
    "check_failpoints",
    "compare",
    "exclude_late",
    "inject_duplicates",
    "load_target",
    "run_verification",
]
