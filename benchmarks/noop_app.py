"""A no-op Serve app with the recserve topology (FastAPI ingress -> one model deployment).

It parses the same request schemas and answers at once (k fixed items; an interaction acknowledged
without storing it), so it measures the floor that Ray Serve, HTTP and one handle call cost on this
machine, to compare the real app against.
"""

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.contract import Candidate, ModelQuery
from deployments.schemas import InteractionBatch, InteractionsBody, RecommendRequest

noop_api = FastAPI()


# No CPU reservation: the real app's replicas already hold the two cores' worth of CPU slots.
@serve.deployment(ray_actor_options={"num_cpus": 0})
class NoopModel:
    async def recommend(self, query: ModelQuery) -> list[Candidate]:
        return [Candidate(item_id=str(i), score=1.0, source="noop", reason="noop") for i in range(query.k)]

    async def observe(self, event_ids: list[int]) -> bool:
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(noop_api)
class NoopIngress:
    def __init__(self, model: DeploymentHandle):
        self.model = model

    @noop_api.post("/v1/recommend")
    async def recommend(self, request: RecommendRequest) -> dict:
        items = await self.model.recommend.remote(ModelQuery(k=request.k, user_id=request.user_id))
        return {"items": [c.model_dump() for c in items]}

    @noop_api.post("/v1/interactions", status_code=201)
    async def interactions(self, body: InteractionsBody) -> dict:
        events = body.events if isinstance(body, InteractionBatch) else [body]
        return {"memory_updated": await self.model.observe.remote(list(range(len(events))))}


noop_app = NoopIngress.bind(NoopModel.bind())
