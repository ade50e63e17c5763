"""The budget and team-quota decision (stockade.grantpolicy.budget): examples, then hypothesis properties.

The properties check ``decide`` against an oracle written here from the definitions (what each budget
counts, StrictFIFO per budget), not against the module's own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.api.reasons import BUDGET_EXHAUSTED, NO_POLICY, POLICY_INVALID, TEAM_QUOTA_EXCEEDED
from stockade.grantpolicy.budget import (
    Ask,
    Outcome,
    Policy,
    Quota,
    Run,
    decide,
    usage_status,
)
from stockade.grantpolicy.selector import selects

GPU = "nvidia.com/gpu"
MIG = "nvidia.com/mig-1g.10gb"


def policy(name: str, selector: dict[str, Any] | None = None, **budgets: dict[str, Any]) -> Policy:
    return Policy.from_body({"metadata": {"name": name},
                             "spec": {"namespaceSelector": selector or {}, "budgets": budgets}})


def run(name: str, namespace: str = "team-a", second: int = 0, *, cpu: str = "1", memory: str = "1Gi",
        gpu: int = 0, resource: str | None = GPU, pods: int = 1, held: bool = False, uid: str | None = None) -> Run:
    return Run(namespace, name, uid or name, f"2026-01-01T00:00:{second:02d}Z",
               Ask(Decimal(cpu) if cpu[-1].isdigit() else Decimal(cpu[:-1]) / 1000, Decimal(1 << 30) *
                   int(memory.removesuffix("Gi")), Decimal(0), pods, gpu, resource if gpu else None), held)


LABELS = {"team-a": {"team": "a"}, "team-b": {"team": "b"}}


def outcome(runs: list[Run], policies: list[Policy], quotas: list[Quota] = ()) -> Outcome:  # type: ignore[assignment]
    return decide(runs, policies, LABELS, quotas)


# Examples -------------------------------------------------------------------------------------------

def test_runs_beyond_the_run_budget_wait_in_creation_order() -> None:
    runs = [run(f"r{i}", second=i) for i in range(8)]
    out = outcome(runs, [policy("p", total={"runs": 5})])
    assert [r.name for r in runs if out.decisions[r.key].admitted] == ["r0", "r1", "r2", "r3", "r4"]
    waiting = out.decisions[("team-a", "r5")]
    assert waiting.reason == BUDGET_EXHAUSTED
    assert waiting.message == "runs: used 5 + asked 1 > limit 5 (AgentPolicy p, budgets.total)"
    assert out.decisions[("team-a", "r7")].message == waiting.message  # short itself: no need to name r5
    assert out.usage["p"]["runs"].used == 5 and out.usage["p"]["runs"].limit == 5


def test_ties_in_creation_time_go_by_uid() -> None:
    runs = [run("x", uid="b"), run("y", uid="a")]
    out = outcome(runs, [policy("p", total={"runs": 1})])
    assert out.decisions[("team-a", "y")].admitted and not out.decisions[("team-a", "x")].admitted


def test_within_one_second_the_order_of_first_sight_comes_before_uid() -> None:
    first, second = run("first", uid="z"), run("second", uid="a")
    out = outcome([Run(**{**first.__dict__, "seen": 0}), Run(**{**second.__dict__, "seen": 1})],
                  [policy("p", total={"runs": 1})])
    assert out.decisions[("team-a", "first")].admitted and not out.decisions[("team-a", "second")].admitted


def test_admission_is_sticky_even_over_a_lowered_budget() -> None:
    runs = [run("old1", held=True, second=9), run("old2", held=True, second=9), run("new", second=1)]
    out = outcome(runs, [policy("p", total={"runs": 1})])
    assert out.decisions[("team-a", "old1")].admitted and out.decisions[("team-a", "old2")].admitted
    assert not out.decisions[("team-a", "new")].admitted
    assert out.usage["p"]["runs"].used == 2  # over the limit, shown as it is


def test_team_quota_counts_the_team_namespace_own_use() -> None:
    quota = Quota("team-a", "compute", {"requests.nvidia.com/gpu": "1", "requests.cpu": "4"},
                  {"requests.nvidia.com/gpu": "0", "requests.cpu": "3"})
    out = outcome([run("big", gpu=4), run("cpu2", cpu="2", second=1), run("cpu1", cpu="1", second=2)],
                  [policy("p")], [quota])
    big = out.decisions[("team-a", "big")]
    assert big.reason == TEAM_QUOTA_EXCEEDED
    assert big.message.startswith("requests.nvidia.com/gpu: used 0 + asked 4 > limit 1 (ResourceQuota team-a/compute)")
    assert "cannot fit until the limit is raised" in big.message
    # "big" can never fit: it does not hold the line. cpu2 does not fit (3 + 2 > 4) and holds it for cpu1.
    assert out.decisions[("team-a", "cpu2")].reason == TEAM_QUOTA_EXCEEDED
    assert "queued behind team-a/cpu2" in out.decisions[("team-a", "cpu1")].message


def test_strict_fifo_is_per_budget_other_teams_go_ahead() -> None:
    p = policy("p", perNamespace={"gpus": {GPU: 2}})
    out = outcome([run("a-big", gpu=2, second=0), run("a-next", gpu=1, second=1), run("a-more", gpu=1, second=2),
                   run("b-one", "team-b", gpu=2, second=3)], [p])
    assert out.decisions[("team-a", "a-big")].admitted
    assert not out.decisions[("team-a", "a-next")].admitted
    assert out.decisions[("team-b", "b-one")].admitted
    assert out.decisions[("team-a", "a-next")].message.startswith(
        "nvidia.com/gpu: used 2 + asked 1 > limit 2 (AgentPolicy p, budgets.perNamespace for team-a)")


def test_gpu_budgets_are_per_resource_and_memory_is_shown_in_binary_units() -> None:
    p = policy("p", total={"gpus": {GPU: 1, MIG: 7}, "memory": "3Gi"})
    out = outcome([run("mig", gpu=7, resource=MIG), run("gpu", gpu=1, second=1),
                   run("mem", memory="2Gi", second=2)], [p])
    assert out.decisions[("team-a", "mig")].admitted and out.decisions[("team-a", "gpu")].admitted
    assert out.decisions[("team-a", "mem")].message == \
        "memory: used 2Gi + asked 2Gi > limit 3Gi (AgentPolicy p, budgets.total)"


def test_every_selecting_policy_applies() -> None:
    loose, tight = policy("all", total={"runs": 10}), policy("team-a-only", {"matchLabels": {"team": "a"}},
                                                            total={"runs": 1})
    out = outcome([run("one"), run("two", second=1), run("b", "team-b", second=2)], [loose, tight])
    assert out.decisions[("team-a", "one")].policies == ("all", "team-a-only")
    assert "team-a-only" in out.decisions[("team-a", "two")].message
    assert out.decisions[("team-b", "b")].admitted and out.decisions[("team-b", "b")].policies == ("all",)


def test_closed_without_policy_and_with_an_invalid_one() -> None:
    out = outcome([run("r")], [policy("only-b", {"matchLabels": {"team": "b"}})])
    assert out.decisions[("team-a", "r")].reason == NO_POLICY
    broken = Policy.from_body({"metadata": {"name": "bad"}, "spec": {"namespaceSelector": {}, "budgets": "x"}})
    out = outcome([run("r")], [broken])
    assert out.decisions[("team-a", "r")].reason == POLICY_INVALID and "bad" in out.decisions[("team-a", "r")].message
    unreadable = Policy.from_body({"metadata": {"name": "worse"}, "spec": {"namespaceSelector": 7}})
    assert unreadable.selector is None and unreadable.invalid  # selects everything, admits nothing


# Properties -----------------------------------------------------------------------------------------

NAMESPACES = ["team-a", "team-b", "team-c"]
LABELS_ALL = {"team-a": {"team": "a", "gpu": "yes"}, "team-b": {"team": "b", "gpu": "yes"}, "team-c": {"team": "c"}}

budget_st = st.fixed_dictionaries({}, optional={
    "runs": st.integers(0, 6), "cpu": st.integers(0, 12).map(str), "memory": st.integers(0, 40).map(lambda g: f"{g}Gi"),
    "gpus": st.dictionaries(st.sampled_from([GPU, MIG]), st.integers(0, 8), max_size=2)})
selector_st = st.sampled_from([{}, {"matchLabels": {"gpu": "yes"}}, {"matchLabels": {"team": "a"}},
                               {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["b"]}]}])
policy_st = st.builds(lambda sel, scopes: {"namespaceSelector": sel, "budgets": scopes}, selector_st,
                      st.fixed_dictionaries({}, optional={"perNamespace": budget_st, "total": budget_st}))
quota_st = st.builds(
    Quota, st.sampled_from(NAMESPACES), st.sampled_from(["q1", "q2"]),
    st.fixed_dictionaries({}, optional={"requests.cpu": st.integers(0, 10).map(str), "pods": st.integers(0, 8).map(str),
                                        "requests.nvidia.com/gpu": st.integers(0, 6).map(str),
                                        "limits.memory": st.integers(0, 40).map(lambda g: f"{g}Gi")}),
    st.fixed_dictionaries({}, optional={"requests.cpu": st.integers(0, 3).map(str),
                                        "pods": st.integers(0, 2).map(str)}))
ask_st = st.builds(lambda cpu, mem, pods, gpu, res: Ask(Decimal(cpu), Decimal(mem << 30), Decimal(0), pods, gpu,
                                                        res if gpu else None),
                   st.integers(1, 4), st.integers(1, 8), st.integers(1, 3), st.integers(0, 4),
                   st.sampled_from([GPU, MIG]))
run_st = st.builds(lambda ns, second, uid, ask, held: (ns, second, uid, ask, held), st.sampled_from(NAMESPACES),
                   st.integers(0, 5), st.text("abcdef", min_size=4, max_size=4), ask_st, st.booleans())


def _runs(raw: list[tuple[str, int, str, Ask, bool]]) -> list[Run]:
    return [Run(ns, f"r{i}", f"{uid}{i}", f"2026-01-01T00:00:{second:02d}Z", ask, held)
            for i, (ns, second, uid, ask, held) in enumerate(raw)]


def _policies(raw: list[dict[str, Any]]) -> list[Policy]:
    return [Policy.from_body({"metadata": {"name": f"p{i}"}, "spec": spec}) for i, spec in enumerate(raw)]


def _q(value: str) -> Decimal:
    return Decimal(value.removesuffix("Gi")) * (1 << 30) if value.endswith("Gi") else Decimal(value)


def _oracle_budgets(run: Run, policies: list[Policy], quotas: list[Quota]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every budget the run counts against: key -> {"limit": {res: n}, "ask": {res: n}, "members": predicate}."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    ask = {"runs": Decimal(1), "cpu": run.ask.cpu, "memory": run.ask.memory}
    if run.ask.gpu:
        ask[str(run.ask.gpu_resource)] = Decimal(run.ask.gpu)
    for p in policies:
        if p.selector is not None and not selects(p.selector, LABELS_ALL[run.namespace]):
            continue
        for scope, budget in p.budgets.items():
            limit: dict[str, Decimal] = {}
            if budget.runs is not None:
                limit["runs"] = Decimal(budget.runs)
            if budget.cpu is not None:
                limit["cpu"] = _q(budget.cpu)
            if budget.memory is not None:
                limit["memory"] = _q(budget.memory)
            limit.update({r: Decimal(n) for r, n in (budget.gpus or {}).items()})
            key = ("p", p.name, scope, run.namespace if scope == "perNamespace" else "")
            found[key] = {"limit": limit, "ask": ask, "base": {}}
    for q in quotas:
        if q.namespace != run.namespace:
            continue
        parts = {"requests.cpu": run.ask.cpu, "pods": Decimal(run.ask.pods), "limits.memory": run.ask.memory,
                 "requests.nvidia.com/gpu": Decimal(run.ask.gpu if run.ask.gpu_resource == GPU else 0)}
        found[("q", q.namespace, q.name)] = {"limit": {k: _q(v) for k, v in q.hard.items()},
                                             "ask": {k: parts[k] for k in q.hard},
                                             "base": {k: _q(v) for k, v in q.used.items() if k in q.hard}}
    return found


def _fails(budget: Mapping[str, Any], used: Mapping[str, Decimal]) -> bool:
    return any(a > 0 and r in budget["limit"] and budget["base"].get(r, 0) + used.get(r, 0) + a > budget["limit"][r]
               for r, a in budget["ask"].items())


def _never(budget: Mapping[str, Any]) -> bool:
    return any(a > 0 and r in budget["limit"] and a > budget["limit"][r] for r, a in budget["ask"].items())


@settings(max_examples=300, deadline=None)
@given(st.lists(run_st, max_size=14), st.lists(policy_st, min_size=1, max_size=3), st.lists(quota_st, max_size=3))
def test_admission_stays_within_every_budget_and_follows_creation_order(raw_runs: Any, raw_policies: Any,
                                                                         raw_quotas: Any) -> None:
    runs, policies = _runs(raw_runs), _policies(raw_policies)
    quotas = list({(q.namespace, q.name): q for q in raw_quotas}.values())
    out = decide(runs, policies, LABELS_ALL, quotas)
    budgets = {r.key: _oracle_budgets(r, policies, quotas) for r in runs}
    admitted = [r for r in runs if out.decisions[r.key].admitted]
    held = [r for r in runs if r.held]

    def usage(members: list[Run]) -> dict[tuple[str, ...], dict[str, Decimal]]:
        used: dict[tuple[str, ...], dict[str, Decimal]] = {}
        for member in members:
            for key, b in budgets[member.key].items():
                for res, a in b["ask"].items():
                    used.setdefault(key, {})[res] = used.setdefault(key, {}).get(res, Decimal(0)) + a
        return used

    # Sticky: every held run stays admitted.
    assert all(out.decisions[r.key].admitted for r in held)
    # Within limits: when the held runs alone fit every budget, so does everything admitted.
    held_use, total = usage(held), usage(admitted)

    def over(use: dict[tuple[str, ...], dict[str, Decimal]], member: Run) -> list[tuple[tuple[str, ...], str]]:
        return [(key, res) for key, b in budgets[member.key].items() for res, limit in b["limit"].items()
                if use.get(key, {}).get(res, 0) > 0 and b["base"].get(res, 0) + use[key][res] > limit]

    if not any(over(held_use, r) for r in held):
        assert not [found for r in admitted for found in over(total, r)]
    # Creation order, StrictFIFO per budget. The runs that waited, in order, and what was admitted before each.
    pending = sorted((r for r in runs if not r.held), key=lambda r: (r.created, r.uid))
    line: dict[tuple[str, ...], Run] = {}  # budget -> the earliest queued run short of it (that could fit)
    before = list(held)
    for r in pending:
        mine = budgets[r.key]
        used = usage(before)
        short = [key for key, b in mine.items() if _fails(b, used.get(key, {}))]
        decision = out.decisions[r.key]
        if decision.reason in (NO_POLICY, POLICY_INVALID):
            assert not decision.admitted
            continue
        if decision.admitted:
            assert not short, f"{r.key} admitted over {short}"
            ahead = [line[k].key for k in mine if k in line]
            assert not ahead, f"{r.key} admitted ahead of {ahead}"
            before.append(r)
        else:
            behind = [k for k in mine if k in line]
            assert short or behind, f"{r.key} queued though it fits and nothing earlier waits for its budgets"
            if short and not any(_never(mine[k]) for k in mine):
                for key in short:
                    line.setdefault(key, r)


def test_policy_usage_for_status_and_printer_columns() -> None:
    p = policy("p", total={"runs": 5, "gpus": {GPU: 8}, "cpu": "20"})
    out = outcome([run("a", gpu=2, held=True), run("b", gpu=1, second=1), run("m", gpu=3, resource=MIG, second=2)],
                  [p])
    assert usage_status(out.usage["p"]) == {"runs": "3/5", "gpus": {GPU: "3/8", MIG: "3"}, "gpusTotal": "6/8",
                                            "cpu": "3/20", "memory": "3Gi"}
    assert usage_status(outcome([], [policy("q")]).usage["q"]) == {
        "runs": "0", "gpus": None, "gpusTotal": "0", "cpu": "0", "memory": "0"}
