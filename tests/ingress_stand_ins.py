"""Stand-ins for a Serve deployment handle's methods and for Ray's metrics, for testing the ingress's
own logic without a cluster, and the helpers those tests share."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from deployments.ingress import _validation_error
from deployments.schemas import RecommendRequest


class Method:
    """A deployment method's `.remote(arg)`: records the call, then answers, raises or stalls."""

    def __init__(self, answer=None, error: Exception | None = None, delay_s: float = 0.0):
        self.answer, self.error, self.delay_s = answer, error, delay_s
        self.calls: list = []

    def remote(self, argument=None):
        self.calls.append(argument)

        async def call():
            await asyncio.sleep(self.delay_s)
            if self.error is not None:
                raise self.error
            return self.answer

        return call()


class Counter:
    """A `ray.serve.metrics` Counter / Histogram that counts per tag set."""

    def __init__(self) -> None:
        self.counts: dict[tuple, int] = {}

    def inc(self, value: int = 1, tags: dict | None = None) -> None:
        key = tuple(sorted((tags or {}).items()))
        self.counts[key] = self.counts.get(key, 0) + value

    def observe(self, value: float, tags: dict | None = None) -> None:
        self.inc(1, tags)


def run(coroutine):
    return asyncio.run(coroutine)


def fields_of_422(payload: dict, model=RecommendRequest) -> list[str]:
    """The `fields` the ingress's 422 handler reports for a body that fails validation."""
    with pytest.raises(ValidationError) as failed:
        model.model_validate(payload)
    errors = [{**e, "loc": ("body", *e["loc"])} for e in failed.value.errors()]
    response = run(_validation_error(None, RequestValidationError(errors)))
    assert response.status_code == 422
    return json.loads(response.body)["fields"]
