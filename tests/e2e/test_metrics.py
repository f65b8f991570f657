"""`/metrics` of the running api: after real traffic its histograms and counters have moved."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack import Stack
from tests.e2e.test_feed import ids_of, open_feed
from tests.support import extra_api, post_many, stored_ids, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
POSTED = (("method", "POST"), ("route", "/messages"), ("status", "202"))
INVALID = (("method", "POST"), ("route", "/messages"), ("status", "400"))
DURATION = "feedsvc_http_request_duration_seconds"


async def scrape(client: httpx.AsyncClient, url: str = "/metrics") -> Samples:
    """Every sample of a `/metrics`, parsed by the Prometheus client's own parser."""
    response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def moved(before: Samples, after: Samples, name: str, *labels: tuple[str, str]) -> float:
    """How much a sample grew between two scrapes (absent counts as 0)."""
    key = (name, tuple(sorted(labels)))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_traffic_moves_the_histograms_and_counters(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """40 posts read live by one feed client and a bad post: every family they touch moved."""
    before = await scrape(client)
    async with open_feed(stack.api_url, {"limit": 0}) as sse:
        during = await scrape(client)
        ids = await post_many(client, author, 40)
        bad = await client.post(
            "/messages", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400
        seen: list[str] = []
        while not set(ids) <= set(seen):
            seen += ids_of(await sse.messages(1, within=60))

        async def now() -> Samples:
            return await scrape(client)

        # Counters the relay keeps are copied in at each scrape; the delivery of the last
        # chunk is recorded once its write returned: poll, bounded.
        after = await wait_for(
            now,
            lambda s: moved(before, s, "feedsvc_feed_delivery_seconds_count") >= 2,
            30,
            "sampled deliveries in the histogram",
        )
    async with open_feed(stack.api_url, {"limit": 0, "last_event_id": "garbage"}) as lost:
        while (event := await lost.next(30)) is not None and event.event != "reset":
            pass
    unknown = ("reason", "unknown_position")
    resets = await scrape(client)
    assert moved(after, resets, "feedsvc_feed_resets_total", unknown) >= 1
    assert during[("feedsvc_feed_subscribers", ())] >= 1
    assert moved(before, after, f"{DURATION}_count", *POSTED) >= 40
    assert moved(before, after, f"{DURATION}_sum", *POSTED) > 0
    assert moved(before, after, f"{DURATION}_count", *INVALID) >= 1
    assert not [key for key in after if ("route", "/feed") in key[1]], "/feed is not timed"
    assert moved(before, after, "feedsvc_posts_accepted_total") >= 40
    refused = (("reason", "invalid"), ("status", "400"))
    assert moved(before, after, "feedsvc_posts_refused_total", *refused) >= 1
    assert moved(before, after, "feedsvc_feed_streams_total") >= 1
    assert moved(before, after, "feedsvc_feed_events_total") >= 40
    assert moved(before, after, "feedsvc_feed_events_sent_total") >= 40
    delivered = moved(before, after, "feedsvc_feed_delivery_seconds_count")
    assert moved(before, after, "feedsvc_feed_delivery_seconds_sum") / delivered < 10
    lag = after[("feedsvc_relay_lag_seconds", ())]
    assert 0 < lag < 60, f"the relay read a resolved timestamp lately: {lag}"
    assert after[("feedsvc_feed_head_offset", ())] > before.get(("feedsvc_feed_head_offset", ()), 0)


async def test_the_writer_serves_health_on_its_port(stack: Stack) -> None:
    """The writer's port answers /health/live and, once it consumes, /health/ready with 200."""
    async with httpx.AsyncClient(base_url=stack.writer_url, timeout=10) as writer:
        live = await writer.get("/health/live")

        async def ready() -> int:
            return (await writer.get("/health/ready")).status_code

        await wait_for(ready, lambda status: status == 200, 30, "the writer ready")
        missing = await writer.get("/nothing")
    assert live.status_code == 200 and live.json() == {"status": "live"}
    assert missing.status_code == 404


async def test_the_writer_measures_its_batches_and_accepted_to_stored(
    stack: Stack, author: str
) -> None:
    """30 posts: the writer's port shows them stored, batched and timed from acceptance."""
    metrics = f"{stack.writer_url}/metrics"
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        before = await scrape(client, metrics)
        await post_many(client, author, 30)
        await wait_for(
            lambda: stored_ids(stack, author), lambda got: len(got) == 30, 60, "30 rows stored"
        )

        async def now() -> Samples:
            return await scrape(client, metrics)

        after = await wait_for(
            now, lambda s: moved(before, s, "feedsvc_writer_stored_total") >= 30, 30, "stored"
        )
    assert moved(before, after, "feedsvc_writer_batch_size_count") >= 1
    assert moved(before, after, "feedsvc_writer_batch_size_sum") >= 30
    assert moved(before, after, "feedsvc_writer_insert_seconds_count") >= 1
    stored = moved(before, after, "feedsvc_writer_accepted_to_stored_seconds_count")
    assert stored >= 30
    mean = moved(before, after, "feedsvc_writer_accepted_to_stored_seconds_sum") / stored
    assert 0 < mean < 60, f"accepted to stored: {mean} s on average"
    assert not [key for key in after if key[0].startswith("feedsvc_http_")], "api families"


async def test_the_api_times_kafka_acknowledgements(client: httpx.AsyncClient, author: str) -> None:
    """20 accepted posts: 20 produce-to-acknowledgement times, each under the Kafka timeout."""
    before = await scrape(client)
    await post_many(client, author, 20)
    after = await scrape(client)
    acked = moved(before, after, "feedsvc_kafka_produce_seconds_count")
    assert acked >= 20
    assert 0 < moved(before, after, "feedsvc_kafka_produce_seconds_sum") / acked < 5


async def test_the_relay_times_stored_to_published(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """20 posts reach the feed: the relay timed each from its commit to its publication."""
    before = await scrape(client)
    async with open_feed(stack.api_url, {"limit": 0}) as sse:
        ids = await post_many(client, author, 20)
        seen: list[str] = []
        while not set(ids) <= set(seen):
            seen += ids_of(await sse.messages(1, within=60))
    after = await scrape(client)
    published = moved(before, after, "feedsvc_feed_stored_to_published_seconds_count")
    assert published >= 20
    mean = moved(before, after, "feedsvc_feed_stored_to_published_seconds_sum") / published
    assert 0 < mean < 60, f"stored to published: {mean} s on average"


async def test_two_api_processes_sharing_a_multiprocess_dir_add_up(
    stack: Stack, author: str, tmp_path: Path
) -> None:
    """Two real api processes on one PROMETHEUS_MULTIPROC_DIR: either one's scrape is the sum."""
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with (
        extra_api(stack, "api-mp1", **shared) as first,
        extra_api(stack, "api-mp2", **shared) as second,
    ):
        async with (
            httpx.AsyncClient(base_url=first, timeout=30) as one,
            httpx.AsyncClient(base_url=second, timeout=30) as two,
        ):
            await post_many(one, author, 5, "one")
            await post_many(two, author, 7, "two")
            async with open_feed(second, {"limit": 0}):

                async def seen_by_first() -> Samples:
                    return await scrape(one)

                # The second process copies its gauges in every second.
                summed = await wait_for(
                    seen_by_first,
                    lambda s: s.get(("feedsvc_feed_subscribers", ()), 0) >= 1,
                    30,
                    "the second process's stream in the first one's scrape",
                )
            own = await scrape(two)
    assert summed[("feedsvc_posts_accepted_total", ())] == 12
    assert summed[(f"{DURATION}_count", POSTED)] == 12
    assert own[("feedsvc_posts_accepted_total", ())] == 12, "any process answers the sum"


async def test_a_ready_api_says_so_in_its_metrics(client: httpx.AsyncClient) -> None:
    """While /health/ready answers 200, the api's `feedsvc_api_ready` counts it ready."""
    assert (await client.get("/health/ready")).status_code == 200

    async def now() -> Samples:
        return await scrape(client)

    samples = await wait_for(
        now, lambda s: s.get(("feedsvc_api_ready", ()), 0) >= 1, 10, "the api counted ready"
    )
    assert samples[("feedsvc_api_ready", ())] == 1
