"""The ``stockade`` command (also ``kubectl stockade``)."""

from __future__ import annotations

import datetime
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import typer

from stockade.cli_common import OUTPUT, Output, console, fail, print_json
from stockade.cli_doctor import doctor

if TYPE_CHECKING:
    from stockade.fence_report import Fence

app = typer.Typer(help="Stockade: fences for autonomous AI agents.", no_args_is_help=True)

NOT_FOUND = 2  # exit code: scripts tell "no such AgentRun" from a failed call (1)
NOT_QUARANTINED = 3  # exit code of `release` for a run that is not quarantined: nothing was changed


# The shared parts live in cli_common; these names stay importable from here.
_print_json = print_json


@app.command()
def version(output: Output = OUTPUT) -> None:
    """The CLI's (and operator's) version."""
    from stockade import __version__

    if output is Output.json:
        _print_json({"version": __version__})
    else:
        typer.echo(f"stockade {__version__}")


@app.command()
def crds() -> None:
    """Print the CustomResourceDefinitions, AgentRun and AgentPolicy (kubectl apply -f -)."""
    from stockade.api.crd import CRDS, render

    sys.stdout.write("---\n".join(render(plural) for plural in CRDS))


def _settings_help() -> str:
    from stockade.settings_doc import help_text

    return help_text()


@app.command(epilog=_settings_help())
def run(
    json_logs: bool = typer.Option(False, "--json", help="JSON logs, one object per line."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    peering: str | None = typer.Option(
        None, help="kopf peering name: with two replicas, only one handles events at a time."),
    priority: int | None = typer.Option(
        None, envvar="STOCKADE_PEERING_PRIORITY",
        help="kopf peering priority (default: the start time in ms, so the newest replica leads)."),
    liveness: str | None = typer.Option("http://0.0.0.0:8081/healthz", help="Liveness endpoint."),
) -> None:
    """Run the operator against the current kubeconfig context (or in-cluster config)."""
    from stockade import kubeconn

    kubeconn.keep_official_client_out()  # before kopf is imported: about 8 MB the operator does not use
    import kopf
    from kopf._core.engines.peering import Identity

    from stockade import logconfig, ports
    from stockade.cli_run import other_operator, warn_if_personal_identity
    from stockade.leadership import peering_identity, start_priority

    try:  # before anything starts: a port in use is one clear line and exit code 1, not a retry loop
        ports.check(ports.listeners(liveness))
    except ports.PortInUse as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from None

    logconfig.configure(json_logs=json_logs, verbose=verbose)
    import stockade.handlers  # noqa: F401  (registers the handlers)

    warn_if_personal_identity()
    refused = other_operator(peering)
    if refused:
        logging.getLogger("stockade").critical(refused)
        raise typer.Exit(1)

    if peering is not None and priority is None:
        # Newer replicas win (start time in ms): a rollout hands over to the new pod at once, and equal
        # priorities (which make every replica pause) do not happen.
        priority = start_priority()
    identity = peering_identity()
    os.environ.update({"STOCKADE_PEERING_IDENTITY": identity, "STOCKADE_PEERING_PRIORITY": str(priority or 0)})
    if peering is not None:
        os.environ["STOCKADE_PEERING_NAME"] = peering
    try:
        kopf.run(clusterwide=True, standalone=peering is None, peering_name=peering, priority=priority or 0,
                 liveness_endpoint=liveness, identity=Identity(identity))
    except BaseException as err:  # whatever ended kopf, the process must not linger
        if isinstance(err, KeyboardInterrupt | SystemExit) and not getattr(err, "code", 0):
            raise
        # A failed root task (peering, a watch, the webhook server) ends kopf's work: exit now, non-zero, so
        # that the pod restarts, rather than wait at exit for threads (API calls, the webhook's) that may hang.
        logging.getLogger("stockade").critical("the operator stopped on an error: %r; exiting", err)
        logging.shutdown()
        os._exit(1)


@app.command()
def release(
    name: str = typer.Argument(..., help="The AgentRun."),
    namespace: str = typer.Option(..., "--namespace", "-n", help="The AgentRun's namespace."),
    as_user: str | None = typer.Option(None, "--as", help="Impersonate this user (as kubectl --as)."),
    output: Output = OUTPUT,
) -> None:
    """Lift an AgentRun's quarantine once a human has looked. Needs the verb 'release' on the AgentRun
    (ClusterRole stockade-releaser); the operator records the authenticated user and the time.
    Exit codes: 2 no such AgentRun, 3 not quarantined (nothing changed), 1 any other failure."""
    from stockade.kube import Kube, KubeError, object_path
    from stockade.kubeconn import NoCredentials
    from stockade.labels import RELEASE_ANNOTATION

    path = object_path("stockade.io/v1alpha1", "AgentRun", namespace, name)
    where = {"namespace": namespace, "name": name}
    try:
        kube = Kube.connect(workers=1, impersonate=as_user)
        # Read first: a release of a run that is not quarantined would leave an annotation that means nothing.
        status = kube.request("GET", path).get("status") or {}
        if not (status.get("quarantine") or {}).get("active"):
            fail(output, f"AgentRun {namespace}/{name} is not quarantined (phase {status.get('phase') or 'unknown'}); "
                 "nothing to release", NOT_QUARANTINED, **where, phase=status.get("phase"))
        # The value is replaced by the authenticated user at admission; what is sent here is a placeholder.
        kube.request("PATCH", path, {"metadata": {"annotations": {RELEASE_ANNOTATION: "requested"}}},
                     content_type="application/merge-patch+json")
    except KubeError as err:
        fail(output, f"release of {namespace}/{name} failed: {err.message or err}",
             NOT_FOUND if err.not_found else 1, **where, status=err.status)
    except NoCredentials as err:
        fail(output, f"release of {namespace}/{name} failed: {err}", 1, **where)
    if output is Output.json:
        _print_json({**where, "requested": True})
    else:
        typer.echo(f"release of {namespace}/{name} requested; the operator records who (status.quarantine.releasedBy)")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def default_namespace() -> str:
    """The kubeconfig context's namespace, else "default" (as kubectl does)."""
    from stockade.kubeconn import context_namespace

    return context_namespace()


def fetch_fence(namespace: str, name: str) -> tuple[dict[str, Any], Fence] | None:
    """The AgentRun and what its run namespace holds (None: no such AgentRun). Raises KubeError."""
    from stockade.fence_report import FENCE_KINDS, Fence
    from stockade.kube import Kube, KubeError, object_path
    from stockade.naming import run_namespace_name

    kube = Kube.connect(workers=len(FENCE_KINDS) + 1)
    try:
        agentrun = kube.request("GET", object_path("stockade.io/v1alpha1", "AgentRun", namespace, name))
    except KubeError as err:
        if err.not_found:
            return None
        raise
    run_ns = (agentrun.get("status") or {}).get("runNamespace") or run_namespace_name(namespace, name)
    unreadable: dict[str, str] = {}

    def read(kind: tuple[str, str]) -> tuple[str, Any]:
        # A user may read the AgentRun but not every kind in the run namespace: that kind is
        # reported as unknown, and the rest of the screen still shows.
        api_version, kind_name = kind
        try:
            if kind_name == "Namespace":
                return kind_name, kube.request("GET", object_path(api_version, kind_name, None, run_ns))
            return kind_name, kube.request("GET", object_path(api_version, kind_name, run_ns)).get("items", [])
        except KubeError as err:
            if not (err.not_found and kind_name == "Namespace"):
                unreadable[kind_name] = f"{err.status} {err.reason}"
            return kind_name, None

    try:
        found = dict(kube.executor.map(read, [("v1", "Namespace"), *FENCE_KINDS]))
    finally:
        kube.executor.shutdown(wait=False)
    objects = {kind: items for kind, items in found.items() if kind != "Namespace" and items is not None}
    return agentrun, Fence(namespace=found["Namespace"], objects=objects, unreadable=unreadable,
                           policies=_read_policies(kube, agentrun, unreadable))


def _read_policies(kube: Any, agentrun: dict[str, Any], unreadable: dict[str, str]) -> list[dict[str, Any]]:
    """The AgentPolicies that bound the run (status.policies): their budgets and what is left of them."""
    from stockade.kube import KubeError

    found = []
    for name in (agentrun.get("status") or {}).get("policies") or []:
        try:
            found.append(kube.request("GET", f"/apis/stockade.io/v1alpha1/agentpolicies/{name}"))
        except KubeError as err:
            unreadable[f"AgentPolicy {name}"] = f"{err.status} {err.reason}"
    return found


@app.command()
def status(
    name: str = typer.Argument(..., help="The AgentRun."),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="The AgentRun's namespace (default: the kubeconfig context's)."),
    output: Output = OUTPUT,
    violations: int = typer.Option(10, min=0, help="How many of the latest violations to show."),
) -> None:
    """The run's fence on one screen: phase, grant, guardrails, quota, pods, violations, quarantine."""
    from stockade import cli_render
    from stockade.fence_report import build_report
    from stockade.kube import KubeError
    from stockade.kubeconn import NoCredentials

    namespace = namespace or default_namespace()
    try:
        fetched = fetch_fence(namespace, name)
    except (KubeError, NoCredentials) as err:
        fail(output, f"could not read AgentRun {namespace}/{name}: {err}", 1, namespace=namespace, name=name)
    if fetched is None:
        fail(output, f"AgentRun {namespace}/{name} not found", NOT_FOUND, namespace=namespace, name=name)
    report = build_report(*fetched, now=now(), violations=violations)
    if output is Output.json:
        _print_json(report)
    else:
        cli_render.status(report, console())


@app.command()
def explain(
    field: str | None = typer.Argument(
        None, help="A field path: grant (default), grant.egress, spec, status.quarantine, ...; or reasons: "
        "every condition and Event reason, what it means and what to do."),
    output: Output = OUTPUT,
) -> None:
    """Explain the AgentRun fields (types, defaults, bounds), from the API's own models, or every reason."""
    from stockade import cli_render
    from stockade.explain import UnknownField
    from stockade.explain import explain as explain_field

    if field == "reasons":
        from stockade import reasons

        if output is Output.json:
            _print_json(reasons.as_json())
        else:
            sys.stdout.write(reasons.render_text())
        return
    try:
        doc = explain_field(field)
    except UnknownField as err:
        fail(output, str(err), NOT_FOUND, field=field)
    if output is Output.json:
        _print_json(doc)
    else:
        cli_render.explain(doc, console())


@app.command("admission-manifests")
def admission_manifests(
    operator_username: list[str] = typer.Option(  # noqa: B008
        ..., "--operator-username", help="The operator's identity, exempt from the policies (repeatable), e.g. "
        "system:serviceaccount:stockade-system:stockade."),
    operator_namespace: str = typer.Option("stockade-system", help="The operator's namespace, never selected."),
    exempt_group: list[str] = typer.Option(  # noqa: B008
        [], "--exempt-group", help="A break-glass group whose members pass like the operator (repeatable)."),
) -> None:
    """Print the ValidatingAdmissionPolicies and their bindings (what holds while the operator is down)."""
    from stockade.admission.vap import render

    sys.stdout.write(render(operator_username, [operator_namespace], exempt_group))


app.command()(doctor)


def main() -> None:
    # Installed as kubectl-stockade, kubectl runs it for `kubectl stockade`: say so in usage lines.
    prog = "kubectl stockade" if sys.argv[0].endswith("kubectl-stockade") else "stockade"
    app(prog_name=prog)


if __name__ == "__main__":
    main()
