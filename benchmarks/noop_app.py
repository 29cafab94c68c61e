"""A no-op Serve app with the recserve topology (FastAPI ingress -> five model deployments).

It parses the same request schemas and answers at once (k fixed items; an interaction acknowledged
without storing it), so it measures the floor that Ray Serve, HTTP and the handle calls cost on this
machine, to compare the real app against. `?calls=N&parallel=true|false` picks the topology of a
recommendation: N model calls one after another (a cascade that ran N stages) or all at once (fusion).
"""

import asyncio

from fastapi import FastAPI, Query
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.contract import Candidates, ModelQuery
from deployments.ingress import MODEL_CALLS
from deployments.schemas import InteractionBatch, InteractionsBody, RecommendRequest

noop_api = FastAPI()


# No CPU reservation: the real app's replicas already hold the two cores' worth of CPU slots.
@serve.deployment(ray_actor_options={"num_cpus": 0})
class NoopModel:
    async def recommend(self, query: ModelQuery) -> Candidates:
        return Candidates.of("noop", [str(i) for i in range(query.k)], [1.0] * query.k, "noop")

    async def observe(self, event_ids: list[int]) -> bool:
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(noop_api)
class NoopIngress:
    def __init__(self, *models: DeploymentHandle):
        self.models = [handle.options(**MODEL_CALLS) for handle in models]  # called as the real ingress calls

    @noop_api.post("/v1/recommend")
    async def recommend(
        self, request: RecommendRequest, calls: int = Query(default=1, ge=1, le=5), parallel: bool = False
    ) -> dict:
        query = ModelQuery(k=request.k, user_id=request.user_id)
        if parallel:
            answers = await asyncio.gather(*(m.recommend.remote(query) for m in self.models[:calls]))
        else:
            answers = [await m.recommend.remote(query) for m in self.models[:calls]]
        return {"items": [c.model_dump() for c in answers[-1].rows()]}

    @noop_api.post("/v1/interactions", status_code=201)
    async def interactions(self, body: InteractionsBody) -> dict:
        events = body.events if isinstance(body, InteractionBatch) else [body]
        return {"memory_updated": await self.models[0].observe.remote(list(range(len(events))))}


def build_noop_app(args: dict | None = None) -> Application:
    """The no-op app; `args` (the namespace the serving config passes every app) is not used."""
    return NoopIngress.bind(*(NoopModel.options(name=f"NoopModel{n}").bind() for n in range(5)))


# Deployed from the same config file as the real app (benchmarks/serving_latency.config_copy), so that Serve builds
# both alike: in its own processes, under the same Serve settings (pipelines/serving.py) and logging config.
NOOP_APPLICATION = {"name": "noop", "route_prefix": "/noop", "import_path": "benchmarks.noop_app:build_noop_app"}
