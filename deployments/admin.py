"""The admin endpoints' token check and the training jobs they start.

A training job is `recserve train <model>` in its own process, launched as a Ray task so it runs
outside the ingress and the request path (Ray's job API would need the dashboard, which
`recserve serve` leaves off). When it succeeds, its new version can be rolled out through the same
user_config path as `serve deploy`. Job records live in the ingress replica that started them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from deployments.rollouts import ARTIFACT_DEPLOYMENTS, deploy_user_config

log = logging.getLogger(__name__)
LOG_TAIL_CHARS = 4000


class AdminRefused(Exception):
    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


def check_token(configured: SecretStr | None, authorization: str | None) -> None:
    """Raise AdminRefused unless `authorization` is "Bearer <the configured token>"."""
    if configured is None or not configured.get_secret_value():
        raise AdminRefused(403, "admin endpoints are disabled: set RECSERVE_ADMIN_TOKEN to enable them")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), configured.get_secret_value().encode()):
        raise AdminRefused(401, "missing or wrong admin token (Authorization: Bearer <token>)")


class TrainingJob(BaseModel):
    job_id: str
    model: str
    state: Literal["running", "succeeded", "failed"] = "running"
    settings: dict[str, Any] = Field(default_factory=dict)
    load: bool = True
    started_at: datetime
    finished_at: datetime | None = None
    version: str | None = Field(default=None, description="the artifact version it trained")
    loaded: bool = Field(default=False, description="the new version was rolled out to the serving replicas")
    log_tail: str = ""


def _train_in_subprocess(command: list[str]) -> tuple[int, str]:
    completed = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    return completed.returncode, (completed.stdout + completed.stderr)[-LOG_TAIL_CHARS:]


class TrainingJobs:
    """Start training jobs and keep their records (this replica's, newest last)."""

    def __init__(self, namespace: str, max_records: int = 100):
        self.namespace = namespace
        self.max_records = max_records
        self.jobs: dict[str, TrainingJob] = {}
        self._tasks: set[asyncio.Task] = set()

    def start(self, model: str, settings: dict[str, Any], load: bool) -> TrainingJob:
        import ray

        command = [sys.executable, "-m", "pipelines.cli", "train", model, "--namespace", self.namespace]
        for key, value in settings.items():
            command += ["--set", f"{key}={json.dumps(value)}"]
        job = TrainingJob(
            job_id=uuid.uuid4().hex[:12], model=model, settings=settings, load=load, started_at=datetime.now(UTC)
        )
        # num_cpus=0: Serve's replicas hold the cluster's CPUs; the OS shares the cores with the job instead.
        ref = ray.remote(num_cpus=0, max_retries=0)(_train_in_subprocess).remote(command)
        self.jobs[job.job_id] = job
        while len(self.jobs) > self.max_records:
            self.jobs.pop(next(iter(self.jobs)))
        task = asyncio.get_running_loop().create_task(self._finish(job, ref))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _finish(self, job: TrainingJob, ref: Any) -> None:
        try:
            returncode, tail = await ref
        except Exception as error:  # noqa: BLE001 - the job's record says what happened
            returncode, tail = -1, f"the training task failed: {error!r}"
        job.log_tail, job.finished_at = tail, datetime.now(UTC)
        # `recserve train` ends with "<model> <version>: {metrics}".
        match = re.search(rf"^{re.escape(job.model)} (\S+): ", tail, re.MULTILINE)
        job.version = match.group(1) if match else None
        trained = returncode == 0 and job.version is not None
        if trained and job.load:
            deployment, key = ARTIFACT_DEPLOYMENTS[job.model]
            try:
                await asyncio.to_thread(deploy_user_config, deployment, {key: job.version}, False)
                job.loaded = True
            except Exception as error:  # noqa: BLE001 - trained is trained; loading can be retried by hand
                log.exception("rolling out %s %s failed", job.model, job.version)
                job.log_tail += f"\nrolling out {job.version} failed: {error!r}"
        # Last, so that a caller who sees the job finished also sees whether it was rolled out.
        job.state = "succeeded" if trained else "failed"
        log.info("training job %s (%s) %s: version %s", job.job_id, job.model, job.state, job.version)
