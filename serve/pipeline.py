"""The request pipeline: every route that runs the model calls :meth:`Pipeline.run`.

Named stages, as LitServe's ``LitAPI`` names them::

    decode      upload bytes -> preprocessed array (thread pool; tensors skip it)
    predict     one image on an idle server: decode + infer in one call (Batcher.alone);
                otherwise the batch queue (Batcher.submit)
    unbatch     the batch's outputs -> one row per image, in request order
    answer      a row -> calibrated top-k, OOD score and unknown flag (serve/trust.py)

The routes only read requests and encode answers (``serve/v1.py``, ``serve/oip.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from serve.batcher import Batcher, ItemResult
from serve.engine import Engine
from serve.inputs import Prepared, Upload, prepare
from serve.settings import Settings
from serve.trust import Prediction, top_k

Item = Upload | np.ndarray  # encoded image bytes, or an already preprocessed [3, H, W] array


@dataclass
class Answer:
    """One image through the pipeline: its raw outputs and what the client is told."""

    prepared: Prepared
    result: ItemResult
    predictions: list[Prediction]
    probabilities: np.ndarray  # calibrated, [C]
    ood_score: float | None
    unknown: bool


class Pipeline:
    """decode -> predict (idle path or batch queue) -> unbatch -> answer, for any route."""

    def __init__(self, settings: Settings, batcher: Batcher, pool: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.batcher = batcher
        self.pool = pool

    async def run(
        self,
        engine: Engine,
        items: Sequence[Item],
        *,
        top_k: int = 5,
        attention: bool = False,
        keep_image: bool = False,
    ) -> list[Answer]:
        """The answers for ``items``, in order."""
        prepared, results = await self.predict(engine, items, attention, keep_image)
        return self.answer(prepared, results, top_k)

    def decode(self, engine: Engine, item: Item, keep_image: bool) -> Prepared:
        """Stage 1: bytes -> model input (runs in a thread: PIL releases the GIL)."""
        if isinstance(item, np.ndarray):
            return Prepared(item)
        pre = engine.metadata.preprocessing
        return prepare(item, pre, self.settings.max_pixels, keep_image, self.settings.formats)

    async def predict(
        self, engine: Engine, items: Sequence[Item], attention: bool, keep_image: bool
    ) -> tuple[list[Prepared], list[ItemResult]]:
        """Stages 1-3: one image on an idle batcher takes the one-hop path; the rest queue."""
        if len(items) == 1 and self.batcher.idle():
            decode = partial(self.decode, engine, items[0], keep_image)
            prepared, result = await self.batcher.alone(engine, decode, attention)
            return [prepared], [result]
        loop = asyncio.get_running_loop()
        with self.batcher.incoming(len(items)):
            jobs = [loop.run_in_executor(self.pool, self.decode, engine, item, keep_image) for item in items]
            prepared = list(await asyncio.gather(*jobs))
        results = await self.batcher.submit(engine, [p.array for p in prepared], attention)
        return prepared, results

    @staticmethod
    def answer(prepared: list[Prepared], results: list[ItemResult], k: int) -> list[Answer]:
        """Stage 4: rows -> calibrated top-k and the unknown flag (serve/trust.py), per request.

        A request's images all run on the engine it started with (the batcher keeps them).
        """
        engine = results[0].engine
        outputs = {engine.logits_name: np.stack([r.logits for r in results])}
        for name in engine.trust_names:
            outputs[name] = np.stack([r.extra[name] for r in results])
        verdicts = engine.trust.apply(outputs)
        return [
            Answer(
                prepared=p,
                result=r,
                predictions=top_k(verdicts.probabilities[i], engine.labels, k),
                probabilities=verdicts.probabilities[i],
                ood_score=verdicts.ood_score(i),
                unknown=bool(verdicts.unknown[i]),
            )
            for i, (p, r) in enumerate(zip(prepared, results, strict=True))
        ]
