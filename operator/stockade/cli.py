"""The ``stockade`` command (also ``kubectl stockade``)."""

from __future__ import annotations

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
    liveness: str | None = typer.Option("http://0.0.0.0:8081/healthz", help="Liveness endpoint."),
) -> None:
    """Run the operator against the current kubeconfig context (or in-cluster config)."""
    import kopf

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL)
    import stockade.handlers  # noqa: F401  (registers the handlers)

    kopf.run(clusterwide=True, standalone=peering is None, peering_name=peering, liveness_endpoint=liveness)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
