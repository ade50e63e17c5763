"""Human output for the CLI: a FenceReport and an explain document, drawn with rich.

Only presentation lives here; every fact comes from the plain dicts built by
``stockade.fence_report`` and ``stockade.explain`` (which ``-o json`` prints as they are).
Colour goes away by itself when the output is not a terminal (rich checks), and NO_COLOR is honoured.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from stockade.api.reasons import TEMPLATE_EXCEEDS_GRANT

PHASE_STYLE = {"Running": "bold green", "Succeeded": "bold cyan", "Pending": "bold yellow", "Queued": "bold yellow",
               "Quarantined": "bold white on red", "Failed": "bold red", "Expired": "bold magenta"}
STATE_STYLE = {"present": ("✓", "green"), "missing": ("✗", "bold red"), "revoked": ("⊘", "yellow"),
               "unrevoked": ("✗", "bold red"), "unknown": ("?", "yellow"), "extra": ("+", "cyan")}
SEVERITY_STYLE = {"low": "dim", "medium": "yellow", "high": "red", "critical": "bold red"}
# Conditions shown in the header, and the status that is bad news for each.
HEADER_CONDITIONS = (("Ready", "False"), ("Stalled", "True"), ("Quarantined", "True"), ("Admitted", "False"),
                     ("PolicyCompliant", "False"), ("EgressResolved", "False"), ("AdmissionReady", "False"))


def duration(seconds: int | None) -> str:
    """kubectl-style age: 45s, 12m, 3h20m, 2d4h."""
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days}d{hours}h" if hours else f"{days}d"
    elif hours:
        text = f"{hours}h{minutes}m" if minutes else f"{hours}h"
    elif minutes:
        text = f"{minutes}m{secs}s" if secs and minutes < 10 else f"{minutes}m"
    else:
        text = f"{secs}s"
    return sign + text


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold dim",
                  box=None, pad_edge=False, expand=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _condition(report: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in report["conditions"] if c["type"] == kind), None)


def _header(report: Mapping[str, Any]) -> RenderableType:
    run = report["agentRun"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    phase = report["phase"] or "Unknown"
    grid.add_row("Phase", Text(phase, style=PHASE_STYLE.get(phase, "bold")))
    said: dict[str, str] = {}
    for kind, bad in HEADER_CONDITIONS:
        cond = _condition(report, kind)
        if cond is None:
            grid.add_row(kind, Text("-", style="dim"))
            continue
        line = Text(str(cond["status"]), style="bold red" if cond["status"] == bad else "green")
        line.append(f"  {cond.get('reason') or ''}", style="bold")
        message = str(cond.get("message") or "")
        # Stalled often repeats Ready's message, and refusals get a panel of their own: say it once.
        if report["refusals"] and cond.get("reason") == TEMPLATE_EXCEEDS_GRANT:
            line.append(": see Template refused below", style="dim")
        elif kind == "Quarantined" and cond["status"] == "True" and report["quarantine"]:
            line.append(": see Quarantine below", style="dim")
        elif message in said:
            line.append(f": as {said[message]}", style="dim")
        elif message:
            line.append(f": {message}")
            said[message] = kind
        grid.add_row(kind, line)
    grid.add_row("Run namespace", report["runNamespace"])
    grid.add_row("Age", f"{duration(run['ageSeconds'])} (created {_text(run['createdAt'])})")
    if report["expiresAt"]:
        left = report["expiresInSeconds"]
        when = f"in {duration(left)}" if left is not None and left > 0 else "passed"
        grid.add_row("Expires", f"{report['expiresAt']} ({when})")
    if report["enforcement"]:
        ladder = " → ".join(report["response"] or []) or "none"
        audit = report["enforcement"] == "audit"
        grid.add_row("Enforcement", Text(f"{report['enforcement']}; response: {ladder}"
                                         + (" (audit: detect and report only, nothing is blocked)" if audit else ""),
                                         style="yellow" if audit else ""))
    if run["observedGeneration"] != run["generation"]:
        grid.add_row("Generation", Text(f"{run['generation']} (operator has seen {run['observedGeneration']})",
                                        style="yellow"))
    if report["specError"]:
        grid.add_row("Spec", Text(report["specError"], style="bold red"))
    return Panel(grid, title=f"[bold]AgentRun {run['namespace']}/{run['name']}", title_align="left",
                 border_style=PHASE_STYLE.get(phase, "white").split()[-1])


def _egress(rules: Sequence[Mapping[str, Any]]) -> RenderableType:
    table = _table("", "DESTINATION", "PORTS", "ADDRESSES")
    for rule in rules:
        ports = f"{_text(rule.get('ports'))}/{rule.get('protocol', 'TCP')}"
        if "cidr" in rule:
            table.add_row(rule["cidr"], ports, Text("(cidr)", style="dim"))
        else:
            addresses = rule.get("addresses") or []
            shown = Text(", ".join(addresses)) if addresses else Text("unresolved: allows nothing", style="yellow")
            table.add_row(rule.get("host", "?"), ports, shown)
    return table


def _grant(report: Mapping[str, Any]) -> RenderableType:
    grant = report["grant"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    gpu = str(grant.get("gpu", 0)) + (f" ({grant['gpuResource']})" if grant.get("gpuResource") else "")
    grid.add_row("Compute", f"cpu {_text(grant.get('cpu'))} · memory {_text(grant.get('memory'))} · gpu {gpu} · "
                            f"ephemeral {_text(grant.get('ephemeralStorage'))} · pods {_text(grant.get('pods'))}")
    grid.add_row("Duration", _text(grant.get("duration")) if grant.get("duration") else "unlimited")
    grid.add_row("DNS", "cluster resolver only" if grant.get("dns") else "none")
    egress = grant.get("egress") or []
    grid.add_row("Egress", _egress(egress) if egress else Text("none: every destination is denied", style="dim"))
    api = grant.get("kubernetesAPI") or []
    if api:
        rules = _table("", "API GROUPS", "RESOURCES", "VERBS", "NAMES")
        for rule in api:
            rules.add_row(_text([g or '""' for g in rule.get("apiGroups") or [""]]), _text(rule.get("resources")),
                          _text(rule.get("verbs")), _text(rule.get("resourceNames")))
        grid.add_row("Kubernetes API", rules)
    else:
        grid.add_row("Kubernetes API", Text("none (no token mounted)", style="dim"))
    if grant.get("runtimeClassNames"):
        grid.add_row("RuntimeClasses", _text(grant["runtimeClassNames"]))
    return Panel(grid, title="[bold]Grant", title_align="left", border_style="blue")


def _guardrails(report: Mapping[str, Any]) -> RenderableType:
    states = {row["state"] for row in report["guardrails"]}
    title = "Guardrails"
    if states & {"missing", "unknown"}:
        title += "  [bold red](fence incomplete)"
    if "unrevoked" in states:
        title += "  [bold red](freeze not in effect: the agent keeps its API access)"
    table = _table(title, "", "KIND", "NAME", "STATE")
    for row in report["guardrails"]:
        mark, style = STATE_STYLE.get(row["state"], ("?", "yellow"))
        table.add_row(Text(mark, style=style), row["kind"], row["name"], Text(row["state"], style=style))
    return table


def _quota(report: Mapping[str, Any]) -> RenderableType | None:
    quota = report["quota"]
    if quota is None:
        return None
    title = "Quota (used / hard)" + ("" if quota["enforced"] else "  [yellow](not enforced yet)")
    table = _table(title, "RESOURCE", "USED", "HARD")
    denied = []
    for row in quota["resources"]:
        if str(row["hard"]) == "0" and str(row["used"] or "0") == "0":
            denied.append(row["resource"])  # the long tail of zeros: one line, below
            continue
        full = row["used"] is not None and str(row["used"]) == str(row["hard"])
        style = "bold red" if row["exceeded"] else "yellow" if full else ""
        table.add_row(row["resource"], Text(_text(row["used"]), style=style), _text(row["hard"]))
    if not denied:
        return table
    return Group(table, Text(f"denied (hard 0): {', '.join(denied)}", style="dim"))


def _pods(report: Mapping[str, Any]) -> RenderableType | None:
    pods = report["pods"]
    if pods is None:
        return None
    if not pods:
        return Text("Pods: none", style="dim")
    table = _table("Pods", "NAME", "PHASE", "NODE", "QUARANTINED")
    for pod in pods:
        phase = _text(pod["phase"]) + (" (terminating)" if pod["terminating"] else "")
        table.add_row(pod["name"], phase, _text(pod["node"]),
                      Text("yes", style="bold red") if pod["quarantined"] else Text("no", style="dim"))
    return table


def _policies(report: Mapping[str, Any]) -> RenderableType | None:
    """Which AgentPolicies bound the run, and what their budgets have left."""
    rows = report.get("policies") or []
    if not rows:
        return None
    table = _table("Policies (total budget: used/limit, left)", "POLICY", "RESOURCE", "USED", "LEFT", "PER NAMESPACE")
    for row in rows:
        if not row["readable"]:
            table.add_row(row["name"], Text("could not be read", style="yellow"), "", "", "")
            continue
        per_ns = dict(row["perNamespace"])
        per_ns.update({f"gpus[{r}]": n for r, n in (per_ns.pop("gpus", None) or {}).items()})
        for i, (resource, used) in enumerate(sorted(row["total"].items())):
            left = row["left"].get(resource)
            shown = Text(left, style="bold red" if left in ("0", "0Gi") else "") if left is not None else \
                Text("unbounded", style="dim")
            table.add_row(row["name"] if i == 0 else "", Text(resource), _text(used), shown,
                          _text(per_ns.get(resource)))
    return table


def _violations(report: Mapping[str, Any]) -> RenderableType:
    shown, total = report["violations"], report["violationsTotal"]
    if not shown:
        return Text("Violations: none", style="green")
    table = _table(f"Violations (last {len(shown)} of {total})", "TIME", "KIND", "SEVERITY", "POD", "ACTION",
                   "DETAIL")
    table.columns[0].no_wrap = True  # a timestamp cut in two is read wrong
    for v in shown:
        count = f" (x{v['count']})" if (v.get("count") or 1) > 1 else ""
        table.add_row(_text(v["time"]), _text(v["kind"]) + count,
                      Text(_text(v["severity"]), style=SEVERITY_STYLE.get(v.get("severity") or "", "")),
                      _text(v["pod"]), _text(v["action"]), _text(v["detail"]))
    return table


def _quarantine(report: Mapping[str, Any]) -> RenderableType | None:
    q = report["quarantine"]
    if not q:
        return None
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("Active", Text("yes", style="bold red") if q.get("active") else Text("no (released)", style="green"))
    for key, label in (("reason", "Reason"), ("message", "Message"), ("since", "Since"), ("pods", "Pods"),
                       ("steps", "Steps applied"), ("releasedAt", "Released at"), ("releasedBy", "Released by")):
        if q.get(key):
            grid.add_row(label, _text(q[key]))
    if q.get("active"):
        run = report["agentRun"]
        grid.add_row("Release", f"kubectl stockade release {run['name']} -n {run['namespace']}")
    return Panel(grid, title="[bold]Quarantine", title_align="left",
                 border_style="red" if q.get("active") else "green")


def status(report: Mapping[str, Any], console: Console) -> None:
    """The whole fence on one screen."""
    parts: list[RenderableType | None] = [_header(report)]
    if report["refusals"]:
        parts.append(Panel("\n".join(report["refusals"]), title="[bold]Template refused",
                           title_align="left", border_style="red"))
    parts += [_quarantine(report), _grant(report), _policies(report), _guardrails(report), _quota(report),
              _pods(report), _violations(report)]
    for kind, why in report["unreadable"].items():
        parts.append(Text(f"could not read {kind}: {why}", style="yellow"))
    for part in parts:
        if part is not None:
            console.print(part)
            console.print()


def _default_text(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _default(field: Mapping[str, Any]) -> Text:
    if field["required"]:
        return Text("required", style="bold")
    return Text(_default_text(field["default"]), style="dim")


def _range(low: Any, high: Any, unit: str) -> str:
    if low is not None and high is not None:
        return f"{low}..{high}{unit}"
    return f"at least {low}{unit}" if low is not None else f"at most {high}{unit}"


def _bounds(constraints: Mapping[str, Any]) -> str:
    parts = []
    for low, high, unit in (("minimum", "maximum", ""), ("minItems", "maxItems", " items"),
                            ("minLength", "maxLength", " chars"), ("items.minimum", "items.maximum", " each")):
        if low in constraints or high in constraints:
            parts.append(_range(constraints.get(low), constraints.get(high), unit))
    return "; ".join(parts)


def explain(doc: Mapping[str, Any], console: Console) -> None:
    head = Text(doc["path"], style="bold cyan")
    head.append(f"  {doc['type']}", style="bold")
    head.append("  (required)" if doc["required"] else f"  default {_default_text(doc['default'])}", style="dim")
    console.print(head)
    if doc["description"]:
        console.print(doc["description"])
    if _bounds(doc["constraints"]):
        console.print(Text(f"bounds: {_bounds(doc['constraints'])}", style="dim"))
    for rule in doc["rules"]:
        console.print(Text(f"rule: {rule}", style="yellow"))
    if doc["fields"]:
        console.print()
        table = _table("Fields", "FIELD", "TYPE", "DEFAULT", "DESCRIPTION")
        for field in doc["fields"]:
            description = Text(field["description"] or "")
            bounds = _bounds(field["constraints"])
            if bounds:
                description.append(f" [{bounds}]", style="dim")
            table.add_row(Text(field["name"], style="cyan"), field["type"], _default(field), description)
        console.print(table)
        console.print(Text(f"more: stockade explain {doc['path']}.<field>", style="dim"))
