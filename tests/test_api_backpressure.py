"""Back-pressure by memory: one-off pushes carry their whole message, so a
node with a small memtx quota and slow gateways fills by memory long before
any task count. The API must answer 429 (with Retry-After) before any
write fails, on every route that writes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from dispatcher.fakes.faults import Faults
from dispatcher.node.contract import Status
from dispatcher.node.records import Registration
from dispatcher.service import Dispatcher
from tests.conftest import apns_token, fcm_token
from tests.e2e import ADMIN, BACKEND, Client, settings_for

DEVICES = 10
# ~3.7 KB: about what APNs and FCM take.
BIG = {"title": "T" * 200, "body": "B" * 2000, "data": {"k": "v" * 1400}}


async def test_429_by_memory_before_any_write_fails(tmp_path: Path) -> None:
    s = settings_for(tmp_path, drain_timeout_s=1)
    s = s.model_copy(update={"node": s.node.model_copy(update={"memtx_memory_mb": 32}),
                             "api": s.api.model_copy(update={"memory_limit_share": 0.4})})
    d = Dispatcher(s)
    await d.start()
    try:
        assert d.fakes is not None
        slow = Faults(slow_share=1.0, slow_s=60)
        d.fakes.apns.faults.set(slow)
        d.fakes.fcm.faults.set(slow)
        await d.subscribers.put_many([Registration(apns_token(i) if i % 2 == 0 else fcm_token(i), "heavy",
                                                   "ios" if i % 2 == 0 else "android", "news")
                                      for i in range(DEVICES)])
        statuses: list[int] = []
        async with aiohttp.ClientSession() as http:
            api = Client(d, http)

            async def push() -> tuple[int, Any]:
                return await api.call("POST", "/v1/pushes", key=BACKEND, json={"user_id": "heavy", "message": BIG})

            refused: tuple[int, Any] | None = None
            for _ in range(200):  # bursts of 20 at once: ~8 MB a round at most
                results = await asyncio.gather(*(push() for _ in range(20)))
                statuses += [status for status, _ in results]
                refused = next((r for r in results if r[0] == 429), None)
                if refused is not None:
                    break
            assert refused is not None, f"no 429 after {len(statuses)} pushes"
            assert set(statuses) <= {202, 429}, sorted(set(statuses))
            assert "memory" in refused[1]["error"]
            quota = 32 * 2**20
            memory = (await Status(d.store).memory())
            assert 0.3 * quota < memory["arena_used"] < 0.5 * quota, memory
            # The 429s come while the node still takes smaller writes.
            status, _ = await api.call("PUT", f"/v1/devices/{apns_token(999)}", key=BACKEND,
                                       json={"user_id": "u", "platform": "ios", "app": "news"})
            assert status == 200
            # Past the limit (written around the API), every route that
            # writes says 429 with Retry-After ...
            task = ["m", {"message": BIG}, apns_token(1), "ios", 2e9, 0, 0, "news"]
            while (await Status(d.store).memory())["arena_used"] < 0.42 * quota:
                await d.queue.tube("ios").put_many([task] * 20)
            await asyncio.sleep(0.2)  # the API's reading is up to 0.1 s old, and these bypassed it
            async with http.post(f"{api.base}/v1/pushes", json={"user_id": "heavy", "message": {"title": "t"}},
                                 headers={"Authorization": f"Bearer {BACKEND}"}) as r:
                assert r.status == 429 and r.headers["Retry-After"] == str(s.api.retry_after_s)
            status, _ = await api.call("PUT", f"/v1/devices/{apns_token(998)}", key=BACKEND,
                                       json={"user_id": "u", "platform": "ios", "app": "news"})
            assert status == 429
            status, _ = await api.call("POST", "/v1/broadcasts", key=ADMIN,
                                       json={"message": {"title": "t"}, "audience": {"app": "news"}},
                                       headers={"Idempotency-Key": "full"})
            assert status == 429
            # ... while the node itself still takes writes, and reads and
            # removals go on.
            await d.subscribers.put(Registration(apns_token(1000), "u2", "ios", "news"))
            assert (await api.call("GET", "/v1/broadcasts", key=ADMIN))[0] == 200
            assert (await api.call("DELETE", f"/v1/devices/{apns_token(1000)}", key=BACKEND))[0] == 204
    finally:
        await d.stop()
