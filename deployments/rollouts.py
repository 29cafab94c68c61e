"""Changing one deployment's `user_config` on the running Serve app: what `serve deploy` does after an
edit of that deployment in the config file. Only user_config changes, so Serve calls `reconfigure` on
the live replicas (a hot swap) instead of replacing them.

Used by `recserve rollout` (from outside the cluster) and by the ingress's admin load endpoint (inside it).
"""

from __future__ import annotations

from typing import Any

# Which deployment serves a model's artifact, and under which user_config key its version goes.
ARTIFACT_DEPLOYMENTS = {
    "tgn": ("TGNDeployment", "version"),
    "hgt": ("HGTDeployment", "version"),
    "lightgcn": ("LightGCNDeployment", "version"),
    "content": ("ContentDeployment", "version"),
    "popularity": ("PopularityDeployment", "version"),
    "fusion": ("Ingress", "fusion_version"),  # the fusion ranker runs inside the ingress
}


def deploy_user_config(deployment: str, update: dict[str, Any], blocking: bool = True) -> None:
    """Merge `update` into `deployment`'s user_config in every application that has it, and redeploy.
    Needs a connection to the cluster (ray.init, or running inside it)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema, ServeInstanceDetails

    client = _get_global_client()
    details = ServeInstanceDetails(**client.get_serve_details())
    applications = []
    found = False
    for name, application in details.applications.items():
        app_config = application.deployed_app_config
        if app_config is None:
            raise RuntimeError(f"application {name!r} was not deployed from a config; cannot change it")
        if deployment in application.deployments:
            found = True
            entries = {d.name: d for d in app_config.deployments}
            entry = entries.setdefault(deployment, DeploymentSchema(name=deployment))
            current = entry.user_config if isinstance(entry.user_config, dict) else {}
            entry.user_config = {**current, **update}
            app_config.deployments = list(entries.values())
        applications.append(app_config)
    if not found:
        raise RuntimeError(f"no running application has a {deployment} deployment")
    config = ServeDeploySchema(
        proxy_location=details.proxy_location, http_options=details.http_options, applications=applications
    )
    client.deploy_apps(config, _blocking=blocking)
