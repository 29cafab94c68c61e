"""The ingress's view of which models are loaded: refreshed in the background once stale, so that a
request never waits for the models' status calls; /v1/status asks for a fresh view and waits for it.
Stand-in handles, no Ray (the real path is tests/test_content_serving.py's health flips)."""

from __future__ import annotations

import asyncio
import time

from deployments.contract import ModelStatus
from deployments.ingress import Ingress, IngressConfig, IngressUserConfig
from tests.ingress_stand_ins import Method, run

STATUS_CALL_S = 0.2


class Gauge:
    def set(self, value: float, tags: dict | None = None) -> None:
        self.value = value


class Metrics:
    def __init__(self) -> None:
        self.fusion_share = Gauge()


class Model:
    def __init__(self, version: str):
        self.status = Method(ModelStatus(model="m", loaded=True, version=version), delay_s=STATUS_CALL_S)


class StatusViewUnderTest:
    model_statuses = Ingress.func_or_class.model_statuses
    _refresh_statuses = Ingress.func_or_class._refresh_statuses
    _fetch_statuses = Ingress.func_or_class._fetch_statuses

    def __init__(self, refresh_s: float):
        self.models = {"m": Model("v1")}
        self.config = IngressConfig(status_refresh_s=refresh_s)
        self.ab = IngressUserConfig()
        self.metrics = Metrics()
        self._statuses, self._statuses_at = {}, 0.0
        self._status_lock = asyncio.Lock()
        self._status_refresh = None

    def roll_out(self, version: str) -> None:
        self.models["m"].status.answer = ModelStatus(model="m", loaded=True, version=version)


async def timed(view: StatusViewUnderTest, **options) -> tuple[str, float]:
    started = time.perf_counter()
    statuses = await view.model_statuses(**options)
    return statuses["m"].version, time.perf_counter() - started


def test_a_stale_view_is_served_at_once_and_refreshed_in_the_background():
    async def scenario():
        view = StatusViewUnderTest(refresh_s=0.05)
        version, waited = await timed(view)  # nothing known yet: the first request waits
        assert version == "v1" and waited >= STATUS_CALL_S
        view.roll_out("v2")
        await asyncio.sleep(0.1)  # the view is stale now
        answers = await asyncio.gather(*(timed(view) for _ in range(5)))
        assert all(version == "v1" and waited < STATUS_CALL_S / 2 for version, waited in answers)
        await asyncio.sleep(STATUS_CALL_S * 1.5)
        version, waited = await timed(view)
        assert version == "v2" and waited < STATUS_CALL_S / 2
        assert len(view.models["m"].status.calls) == 2  # five stale requests started one refresh

    run(scenario())


def test_a_fresh_view_waits_for_the_models():
    async def scenario():
        view = StatusViewUnderTest(refresh_s=60)
        assert (await timed(view))[0] == "v1"
        view.roll_out("v2")
        assert (await timed(view))[0] == "v1"  # within refresh_s: no call at all
        version, waited = await timed(view, fresh=True)
        assert version == "v2" and waited >= STATUS_CALL_S
        assert view.metrics.fusion_share.value == view.ab.fusion_share

    run(scenario())
