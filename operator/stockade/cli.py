"""The ``stockade`` command (also ``kubectl stockade``)."""

from __future__ import annotations

import logging
import random
import sys

import typer

app = typer.Typer(help="Stockade: fences for autonomous AI agents.", no_args_is_help=True,
                  add_completion=False)


@app.command()
def crds() -> None:
    """Print the CustomResourceDefinitions (kubectl apply -f -)."""
    from stockade.api.crd import render

    sys.stdout.write(render())


@app.command()
def run(
    json_logs: bool = typer.Option(False, "--json", help="JSON logs, one object per line."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    peering: str | None = typer.Option(
        None, help="kopf peering name: with two replicas, only one handles events at a time."),
    priority: int | None = typer.Option(
        None, envvar="STOCKADE_PEERING_PRIORITY",
        help="kopf peering priority (default: random, so that one of several replicas wins)."),
    liveness: str | None = typer.Option("http://0.0.0.0:8081/healthz", help="Liveness endpoint."),
) -> None:
    """Run the operator against the current kubeconfig context (or in-cluster config)."""
    import kopf

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL)
    if not verbose:
        # kopf logs every handler call at INFO; the reconciler logs what it changes.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import stockade.handlers  # noqa: F401  (registers the handlers)

    if peering is not None and priority is None:
        # Equal priorities make every replica pause; a random one lets exactly one lead.
        priority = random.SystemRandom().randint(1, 2**31 - 1)
    kopf.run(clusterwide=True, standalone=peering is None, peering_name=peering, priority=priority,
             liveness_endpoint=liveness)


@app.command()
def release(
    name: str = typer.Argument(..., help="The AgentRun."),
    namespace: str = typer.Option(..., "--namespace", "-n", help="The AgentRun's namespace."),
    by: str | None = typer.Option(None, help="Who releases it, recorded in status (default: your login name)."),
) -> None:
    """Lift an AgentRun's quarantine once a human has looked (the operator records who and when)."""
    import getpass

    from stockade.kube import Kube, KubeError, object_path
    from stockade.labels import RELEASE_ANNOTATION

    who = by or getpass.getuser()
    path = object_path("stockade.io/v1alpha1", "AgentRun", namespace, name)
    try:
        Kube.connect(workers=1).request("PATCH", path, {"metadata": {"annotations": {RELEASE_ANNOTATION: who}}},
                                        content_type="application/merge-patch+json")
    except KubeError as err:
        typer.echo(f"release of {namespace}/{name} failed: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"release of {namespace}/{name} requested by {who}")


@app.command("admission-manifests")
def admission_manifests(
    operator_username: list[str] = typer.Option(  # noqa: B008
        ..., "--operator-username", help="The operator's identity, exempt from the policies (repeatable), e.g. "
        "system:serviceaccount:stockade-system:stockade."),
    operator_namespace: str = typer.Option("stockade-system", help="The operator's namespace, never selected."),
) -> None:
    """Print the ValidatingAdmissionPolicies and their bindings (what holds while the operator is down)."""
    from stockade.admission.vap import render

    sys.stdout.write(render(operator_username, [operator_namespace]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
