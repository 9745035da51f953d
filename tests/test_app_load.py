"""The web app under concurrent load: 8 gradio_client clients at once, 5 requests each, across /math and
/speech. Every request must be answered, without error, with exactly what the same input gets when sent
alone (one shared model per task: this catches answers mixed between concurrent requests). Latency
percentiles are printed (``pytest -s`` or ``-rP`` shows them); nothing is asserted about timing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

# Before gradio_client is imported: no analytics, no Hub lookups (platform.md §8).
os.environ.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")

from tests.app_fixtures import build_app_models, serving, write_app_inputs
from tests.conftest import require_module

require_module("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLIENTS = 8
REQUESTS_PER_CLIENT = 5
# (endpoint, input name, options): small inputs and beams, so that 40 requests stay quick on two cores.
JOBS = [("/math", "a", (3, 3, True)), ("/speech", "top", (2, 2)), ("/math", "b", (3, 3, False)),
        ("/speech", "ax", (2, 2)), ("/math", "c", (3, 3, True)), ("/speech", "bx", (2, 2)),
        ("/speech", "by", (2, 2))]


def comparable(endpoint: str, answer: tuple) -> str:
    """An answer as canonical JSON, without what differs between equal requests (the attention
    pictures' cache paths); the n-best scores (4 decimals) tell even equal texts of two inputs apart."""
    if endpoint == "/math":
        latex, rendered, nbest, gallery = answer
        answer = (latex, rendered, nbest, [item.get("caption") for item in gallery or []])
    return json.dumps(answer, sort_keys=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    models = build_app_models(tmp_path_factory.mktemp("app_models"))
    inputs = write_app_inputs(tmp_path_factory.mktemp("app_inputs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with serving(models) as (_, url):
            yield url, inputs
    finally:
        torch.set_num_threads(threads)


def test_concurrent_clients_get_the_answers_of_lone_requests(app):
    url, inputs = app

    def send(client: Client, job: tuple) -> tuple[str, float]:
        endpoint, name, options = job
        start = time.perf_counter()
        answer = client.predict(handle_file(str(inputs[name])), *options, api_name=endpoint)
        return comparable(endpoint, answer), time.perf_counter() - start

    # Alone: one request at a time (this also loads both models before the burst).
    lone_client = Client(url, verbose=False)
    alone = {job: send(lone_client, job)[0] for job in JOBS}
    assert len(set(alone.values())) == len(JOBS), "inputs must differ in their answers, or mixing goes unseen"

    plan = [[JOBS[(c * REQUESTS_PER_CLIENT + k) % len(JOBS)] for k in range(REQUESTS_PER_CLIENT)]
            for c in range(CLIENTS)]
    clients = [Client(url, verbose=False) for _ in range(CLIENTS)]
    start_together = threading.Barrier(CLIENTS)

    def run_client(index: int) -> list[tuple[tuple, str, float]]:
        start_together.wait()
        return [(job, *send(clients[index], job)) for job in plan[index]]

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for rs in pool.map(run_client, range(CLIENTS)) for r in rs]
    wall = time.perf_counter() - start

    assert len(results) == CLIENTS * REQUESTS_PER_CLIENT
    mismatched = [(job, answer) for job, answer, _ in results if answer != alone[job]]
    assert not mismatched, f"{len(mismatched)} concurrent answers differ from lone ones: {mismatched[:3]}"

    latencies = {"all": [t for _, _, t in results]}
    for endpoint in ("/math", "/speech"):
        latencies[endpoint] = [t for job, _, t in results if job[0] == endpoint]
    print(f"\n{CLIENTS} clients x {REQUESTS_PER_CLIENT} requests in {wall:.1f} s "
          f"({len(results) / wall:.2f} requests/s)")
    for name, values in latencies.items():
        print(f"  {name:8} n={len(values):2}  p50={percentile(values, 0.5):.2f} s  "
              f"p90={percentile(values, 0.9):.2f} s  max={max(values):.2f} s")
