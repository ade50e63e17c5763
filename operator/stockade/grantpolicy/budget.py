"""Budgets and team quotas: which active AgentRuns are admitted and which wait Queued (pure).

The reconciler is the authority here, not admission: twenty AgentRuns created at once each pass a webhook
that sees the same usage. ``decide`` looks at every active run at once and answers for each.

* What counts: an admitted run's grant (cpu, memory, GPUs of its ``gpuResource``, pods, one run) against
  every budget of every AgentPolicy selecting its team namespace (``budgets.perNamespace`` over that
  namespace, ``budgets.total`` over all the namespaces the policy selects), and against every
  ResourceQuota of its team namespace, for the resources both name (``cpu``/``requests.cpu``/``limits.cpu``,
  the same for memory and ephemeral storage, ``requests.<gpuResource>``, ``pods``), on top of what the team
  namespace itself already uses (the quota's ``status.used``). A resource a budget does not name is not
  bounded by it (the policy's ceilings say which GPU resources may be granted at all).
* Admission is sticky: a run already admitted (``held``: it has its run namespace, or was admitted by this
  operator) keeps its share even when a budget is lowered under it; nothing is pre-empted. Terminal and
  deleted runs are not passed in at all: their share is free at once.
* Order: runs waiting for admission are considered in creation order: creationTimestamp, which has whole
  seconds, then the order the operator's watch saw them created (the API server's order), then uid.
  Head of line is **StrictFIFO per budget**, as Kueue's StrictFIFO queueing: a run that does not fit budget
  B holds the line for B, and every later run counting against B waits behind it even if it would fit, so a
  large run is not starved by a stream of small ones. Runs that share no blocked budget go ahead. A run
  whose ask alone is over a limit can never fit until the limit is raised: it is Queued but does not hold
  the line (otherwise one impossible run would stop its whole team).
* Closed: a namespace no policy selects admits nothing (``NoPolicy``), and neither does a policy that
  cannot be evaluated (``PolicyInvalid``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from stockade.api.models import Grant
from stockade.api.policy import AgentPolicySpec, Budget, LabelSelector
from stockade.api.reasons import ADMITTED, BUDGET_EXHAUSTED, NO_POLICY, POLICY_INVALID, TEAM_QUOTA_EXCEEDED
from stockade.grantpolicy.ceilings import Bound
from stockade.grantpolicy.selector import selects
from stockade.quantity import format_bytes, format_cpu, parse_quantity

RunKey = tuple[str, str]  # (namespace, name) of an AgentRun

RUNS = "runs"

# ResourceQuota keys a grant charges, and which part of the grant each one counts.
_QUOTA_KEYS = {
    "cpu": "cpu", "requests.cpu": "cpu", "limits.cpu": "cpu",
    "memory": "memory", "requests.memory": "memory", "limits.memory": "memory",
    "ephemeral-storage": "ephemeral", "requests.ephemeral-storage": "ephemeral",
    "limits.ephemeral-storage": "ephemeral",
    "pods": "pods",
}


@dataclass(frozen=True)
class Ask:
    """What one run's grant takes from budgets and quotas."""

    cpu: Decimal
    memory: Decimal
    ephemeral: Decimal = Decimal(0)
    pods: int = 1
    gpu: int = 0
    gpu_resource: str | None = None

    @classmethod
    def of(cls, grant: Grant) -> Ask:
        return cls(parse_quantity(grant.cpu), parse_quantity(grant.memory), parse_quantity(grant.ephemeralStorage),
                   grant.pods, grant.gpu, grant.gpuResource if grant.gpu else None)

    def for_policy(self) -> dict[str, Decimal]:
        amounts = {RUNS: Decimal(1), "cpu": self.cpu, "memory": self.memory}
        if self.gpu and self.gpu_resource:
            amounts[self.gpu_resource] = Decimal(self.gpu)
        return amounts

    def for_quota_key(self, key: str) -> Decimal:
        part = _QUOTA_KEYS.get(key)
        if part == "cpu":
            return self.cpu
        if part == "memory":
            return self.memory
        if part == "ephemeral":
            return self.ephemeral
        if part == "pods":
            return Decimal(self.pods)
        if self.gpu and self.gpu_resource and key in (f"requests.{self.gpu_resource}", f"limits.{self.gpu_resource}"):
            return Decimal(self.gpu)
        return Decimal(0)


@dataclass(frozen=True)
class Run:
    namespace: str
    name: str
    uid: str
    created: str  # metadata.creationTimestamp, RFC 3339 in UTC: sorts as text
    ask: Ask
    held: bool = False  # already admitted: keeps its share
    # creationTimestamp has whole seconds: within one, the order the operator saw the runs appear (its watch
    # delivers them in the API server's order), then uid.
    seen: int = 0

    @property
    def key(self) -> RunKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Policy:
    name: str
    selector: LabelSelector | None
    budgets: Mapping[str, Budget] = field(default_factory=dict)  # "perNamespace" | "total" -> Budget
    invalid: str | None = None  # why it cannot be evaluated: then it admits nothing where it selects

    @classmethod
    def of_bound(cls, bound: Bound) -> Policy:
        """From the policy as admission parsed it (grantpolicy.index): one parse for both."""
        if bound.spec is None:
            return cls(bound.name, bound.selector, invalid=bound.error or "the policy cannot be evaluated")
        budgets = bound.spec.budgets
        scopes = {"perNamespace": budgets.perNamespace, "total": budgets.total} if budgets else {}
        return cls(bound.name, bound.selector, {k: v for k, v in scopes.items() if v is not None})

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Policy:
        """Parse an AgentPolicy as the API server holds it; a bad one becomes ``invalid``, never an error.
        If even its selector cannot be read, it is taken to select every namespace (closed, not open)."""
        name = str((body.get("metadata") or {}).get("name"))
        raw = body.get("spec") or {}
        try:
            spec = AgentPolicySpec.model_validate(raw)
        except (ValidationError, ValueError, TypeError) as err:
            problems = "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()) \
                if isinstance(err, ValidationError) else str(err)
            try:
                selector: LabelSelector | None = LabelSelector.model_validate(raw.get("namespaceSelector") or {})
            except ValidationError:
                selector = None
            return cls(name, selector, invalid=problems)
        budgets = {scope: budget for scope, budget in
                   (("perNamespace", spec.budgets.perNamespace if spec.budgets else None),
                    ("total", spec.budgets.total if spec.budgets else None)) if budget is not None}
        return cls(name, spec.namespaceSelector, budgets)


@dataclass(frozen=True)
class Quota:
    """A ResourceQuota of a team namespace: ``hard`` as the team set it, ``used`` by the team's own pods."""

    namespace: str
    name: str
    hard: Mapping[str, str]
    used: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Quota:
        meta = body.get("metadata") or {}
        return cls(str(meta.get("namespace")), str(meta.get("name")),
                   dict((body.get("spec") or {}).get("hard") or {}), dict((body.get("status") or {}).get("used") or {}))


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str  # Admitted | BudgetExhausted | TeamQuotaExceeded | NoPolicy | PolicyInvalid
    message: str
    policies: tuple[str, ...] = ()  # the AgentPolicies that bound the run


@dataclass(frozen=True)
class Use:
    """One resource of one budget after the decisions."""

    used: Decimal
    limit: Decimal | None


@dataclass
class Outcome:
    decisions: dict[RunKey, Decision]
    # policy name -> resource -> use of its total budget (resources it budgets, and those in use)
    usage: dict[str, dict[str, Use]]


@dataclass
class _Budget:
    key: tuple[str, ...]
    where: str  # for messages: which policy budget or quota
    quota: bool
    limits: dict[str, Decimal]
    used: dict[str, Decimal]


def _budget_limits(budget: Budget | None) -> dict[str, Decimal]:
    if budget is None:
        return {}
    limits: dict[str, Decimal] = {}
    if budget.runs is not None:
        limits[RUNS] = Decimal(budget.runs)
    if budget.cpu is not None:
        limits["cpu"] = parse_quantity(budget.cpu)
    if budget.memory is not None:
        limits["memory"] = parse_quantity(budget.memory)
    for resource, count in (budget.gpus or {}).items():
        limits[resource] = Decimal(count)
    return limits


def _quantities(values: Mapping[str, str]) -> dict[str, Decimal]:
    parsed: dict[str, Decimal] = {}
    for key, value in values.items():
        try:
            parsed[key] = parse_quantity(value)
        except ValueError:
            continue  # the API server validates quotas; an unreadable entry bounds nothing
    return parsed


def amount(resource: str, value: Decimal) -> str:
    """A budget amount as people read it: cores, bytes with a binary suffix, else a count."""
    if resource.endswith("cpu"):
        return format_cpu(value)
    if resource.endswith(("memory", "ephemeral-storage")):
        return format_bytes(value)
    return format_cpu(value) if value != value.to_integral_value() else str(int(value))


class _Ledger:
    """Every budget a run counts against, created on first use, with its running usage."""

    def __init__(self, quotas: Iterable[Quota]) -> None:
        self.budgets: dict[tuple[str, ...], _Budget] = {}
        self.quotas: dict[str, list[_Budget]] = {}
        for quota in quotas:
            hard = {k: v for k, v in _quantities(quota.hard).items()
                    if k in _QUOTA_KEYS or k.startswith(("requests.", "limits."))}
            budget = _Budget(("quota", quota.namespace, quota.name), f"ResourceQuota {quota.namespace}/{quota.name}",
                             True, hard, {k: v for k, v in _quantities(quota.used).items() if k in hard})
            self.budgets[budget.key] = budget
            self.quotas.setdefault(quota.namespace, []).append(budget)

    def policy(self, policy: Policy, scope: str, namespace: str) -> _Budget:
        key = ("policy", policy.name, scope, namespace if scope == "perNamespace" else "")
        found = self.budgets.get(key)
        if found is None:
            where = f"AgentPolicy {policy.name}, budgets.{scope}" + (f" for {namespace}" if scope == "perNamespace"
                                                                     else "")
            found = _Budget(key, where, False, _budget_limits(policy.budgets.get(scope)), {})
            self.budgets[key] = found
        return found

    def of_run(self, run: Run, policies: Sequence[Policy]) -> list[tuple[_Budget, dict[str, Decimal]]]:
        """(budget, what the run asks of it) for every budget the run counts against, in a stable order."""
        asks = run.ask.for_policy()
        found = [(self.policy(p, scope, run.namespace), asks) for p in policies for scope in ("perNamespace", "total")]
        for quota in self.quotas.get(run.namespace, []):
            found.append((quota, {k: run.ask.for_quota_key(k) for k in quota.limits}))
        return found


def _shortfall(budget: _Budget, asks: Mapping[str, Decimal]) -> tuple[str, Decimal, Decimal, Decimal] | None:
    """The first resource the ask does not fit into: (resource, used, asked, limit)."""
    for resource, asked in asks.items():
        limit = budget.limits.get(resource)
        used = budget.used.get(resource, Decimal(0))
        if asked > 0 and limit is not None and used + asked > limit:
            return resource, used, asked, limit
    return None


def _never_fits(budget: _Budget, asks: Mapping[str, Decimal]) -> bool:
    return any(asked > budget.limits[r] for r, asked in asks.items() if asked > 0 and r in budget.limits)


def _charge(budget: _Budget, asks: Mapping[str, Decimal]) -> None:
    for resource, asked in asks.items():
        if asked > 0:
            budget.used[resource] = budget.used.get(resource, Decimal(0)) + asked


def _reason(budget: _Budget) -> str:
    return TEAM_QUOTA_EXCEEDED if budget.quota else BUDGET_EXHAUSTED


def _over(budget: _Budget, short: tuple[str, Decimal, Decimal, Decimal]) -> str:
    resource, used, asked, limit = short
    return (f"{resource}: used {amount(resource, used)} + asked {amount(resource, asked)} > limit "
            f"{amount(resource, limit)} ({budget.where})")


def admitted_message(policies: Sequence[str]) -> str:
    if not policies:
        return "admitted earlier; no AgentPolicy selects its namespace now"
    return f"within the budgets of AgentPolicy {', '.join(policies)} and the team's ResourceQuotas"


def decide(runs: Iterable[Run], policies: Iterable[Policy], namespace_labels: Mapping[str, Mapping[str, str]],
           quotas: Iterable[Quota]) -> Outcome:
    """Admit or queue every active run (terminal and deleted runs are left out by the caller)."""
    all_policies = sorted(policies, key=lambda p: p.name)
    ledger = _Ledger(quotas)
    selecting_cache: dict[str, list[Policy]] = {}

    def selecting(namespace: str) -> list[Policy]:
        if namespace not in selecting_cache:
            labels = namespace_labels.get(namespace) or {}
            selecting_cache[namespace] = [p for p in all_policies if p.selector is None or selects(p.selector, labels)]
        return selecting_cache[namespace]

    decisions: dict[RunKey, Decision] = {}
    ordered = sorted(runs, key=lambda r: (not r.held, r.created, r.seen, r.uid))  # held runs first: sticky
    blocked: dict[tuple[str, ...], tuple[RunKey, str]] = {}  # budget -> (the run holding the line, its shortfall)
    for run in ordered:
        bound = selecting(run.namespace)
        names = tuple(p.name for p in bound)
        valid = [p for p in bound if p.invalid is None]
        budgets = ledger.of_run(run, valid)
        if run.held:
            for budget, asks in budgets:
                _charge(budget, asks)
            decisions[run.key] = Decision(True, ADMITTED, admitted_message(names), names)
            continue
        if not bound:
            decisions[run.key] = Decision(False, NO_POLICY, f"no AgentPolicy selects namespace {run.namespace}: a "
                                          "platform admin must create one that does (kubectl get agentpolicies)")
            continue
        broken = [p for p in bound if p.invalid is not None]
        if broken:
            decisions[run.key] = Decision(False, POLICY_INVALID, f"AgentPolicy {broken[0].name} cannot be evaluated "
                                          f"and admits nothing until fixed: {broken[0].invalid}", names)
            continue
        shortfalls = [(budget, short) for budget, asks in budgets
                      if (short := _shortfall(budget, asks)) is not None]
        if shortfalls:
            never = [budget for budget, asks in budgets if _never_fits(budget, asks)]
            if not never:  # a run that could fit holds the line on every budget it is short of
                for budget, short in shortfalls:
                    blocked.setdefault(budget.key, (run.key, short[0]))
            first, short = (next((b, s) for b, s in shortfalls if b is never[0]) if never else shortfalls[0])
            suffix = "; it cannot fit until the limit is raised" if never else ""
            decisions[run.key] = Decision(False, _reason(first), _over(first, short) + suffix, names)
            continue
        behind = next(((budget, asks, blocked[budget.key]) for budget, asks in budgets if budget.key in blocked),
                      None)
        if behind is not None:
            budget, asks, (ahead, resource) = behind
            used, limit = budget.used.get(resource, Decimal(0)), budget.limits.get(resource, Decimal(0))
            asked = asks.get(resource, Decimal(0))
            decisions[run.key] = Decision(False, _reason(budget), (
                f"{resource}: used {amount(resource, used)} + asked {amount(resource, asked)} of limit "
                f"{amount(resource, limit)} ({budget.where}); queued behind {ahead[0]}/{ahead[1]}, created "
                "earlier and waiting for the same budget (runs are admitted in creation order)"), names)
            continue
        for budget, asks in budgets:
            _charge(budget, asks)
        decision = Decision(True, ADMITTED, admitted_message(names), names)
        decisions[run.key] = decision
    usage = {policy.name: {resource: Use(budget.used.get(resource, Decimal(0)), budget.limits.get(resource))
                           for resource in sorted({RUNS, *budget.limits, *budget.used})}
             for policy in all_policies for budget in [ledger.policy(policy, "total", "")]}
    return Outcome(decisions, usage)


def usage_status(uses: Mapping[str, Use]) -> dict[str, Any]:
    """An AgentPolicy's status.usage: "used/limit" per budgeted resource ("used" alone where unbounded);
    gpusTotal sums every GPU resource for the printer column."""

    def text(resource: str, use: Use) -> str:
        shown = amount(resource, use.used)
        return f"{shown}/{amount(resource, use.limit)}" if use.limit is not None else shown

    none = Use(Decimal(0), None)
    gpus = {r: u for r, u in uses.items() if r not in (RUNS, "cpu", "memory")}
    used = sum((u.used for u in gpus.values()), Decimal(0))
    limits = [u.limit for u in gpus.values() if u.limit is not None]
    total = f"{int(used)}/{int(sum(limits, Decimal(0)))}" if limits else str(int(used))
    return {"runs": text(RUNS, uses.get(RUNS, none)), "gpus": {r: text(r, u) for r, u in sorted(gpus.items())} or None,
            "gpusTotal": total, "cpu": text("cpu", uses.get("cpu", none)),
            "memory": text("memory", uses.get("memory", none))}
