"""What the reconciler remembers when the API server refuses an object it built (pure bookkeeping).

Two kinds of refusal end the retry loop a plain error would start:

* the object is invalid for what it is (422, PodSecurity): nothing but a new spec can change that,
  so the run stalls (``Stalled=True``) until its generation changes;
* a webhook or ValidatingAdmissionPolicy of the platform's denied it: the policy may change without
  the AgentRun changing, so the run is asked again after a delay that doubles up to a minute
  (``Reconciling=True``), and the first success resets it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockade.inputcheck import admission_refusal, api_refusal
from stockade.store import RunKey

FIRST_RETRY_SECONDS = 2.0
LONGEST_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class Refusal:
    problem: str  # "Reason: message"
    stalls: bool  # True: until the spec changes; False: asked again in retry_in seconds
    retry_in: float | None = None


class Refusals:
    def __init__(self) -> None:
        self._stalled: dict[RunKey, tuple[int, str]] = {}  # generation the API server refused, problem
        self._delay: dict[RunKey, float] = {}  # the next wait after an admission refusal
        self.chosen: dict[RunKey, str | None] = {}  # run namespace chosen on the last pass

    def record(self, key: RunKey, generation: int, status: int, message: str) -> Refusal | None:
        """The refusal this answer is, remembered; None for an answer a plain retry may pass."""
        problem = api_refusal(status, message)
        if problem is not None:
            self._stalled[key] = (generation, problem)
            return Refusal(problem, stalls=True)
        problem = admission_refusal(status, message)
        if problem is None:
            return None
        delay = self._delay.get(key, FIRST_RETRY_SECONDS)
        self._delay[key] = min(delay * 2, LONGEST_RETRY_SECONDS)
        return Refusal(problem, stalls=False, retry_in=delay)

    def stalled(self, key: RunKey, generation: int) -> str | None:
        """The problem this generation stalled on, if it did."""
        found = self._stalled.get(key)
        return found[1] if found and found[0] == generation else None

    def succeeded(self, key: RunKey) -> None:
        self._delay.pop(key, None)

    def forget(self, key: RunKey) -> None:
        self._stalled.pop(key, None)
        self._delay.pop(key, None)
        self.chosen.pop(key, None)
