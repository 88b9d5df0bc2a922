"""A local three-node cluster (`dispatcher cluster up`): any node takes a
broadcast, every node reports it, and a key repeated on another node does
not start a second one."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from tests.e2e import MESSAGE


async def test_cluster_up_any_node_is_an_entry(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dispatcher", "cluster", "up", "--nodes", "3", "--dir", str(tmp_path),
        "--tarantool-port", "0", "--http-port", "0", "--demo-devices", "600",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 100)
        assert first.startswith(b"cluster is up: 3 nodes"), first + (await proc.stderr.read() if proc.stderr else b"")
        lines = [(await proc.stdout.readline()).decode() for _ in range(5)]
        apis = [re.search(r"API (http://\S+),", line).group(1) for line in lines[:3]]  # type: ignore[union-attr]
        key = lines[3].split()[-1]
        stats_url = lines[4].split()[-1]
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "cluster-news-1"}
        spec = {"message": MESSAGE, "audience": {"app": "news"}}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{apis[0]}/v1/broadcasts", json=spec, headers=headers) as r:
                assert r.status == 200
                broadcast = await r.json()
            status: dict[str, object] = {}
            for _ in range(300):  # read on another node: the row and the progress replicate
                async with http.get(f"{apis[1]}/v1/broadcasts/{broadcast['id']}", headers=headers) as r:
                    if r.status == 200:
                        status = await r.json()
                        if status["state"] == "done":
                            break
                await asyncio.sleep(0.1)
            assert status.get("state") == "done", status
            assert status["progress"]["delivered"] == 600  # type: ignore[index]
            for _ in range(100):
                async with http.get(f"{apis[2]}/readyz") as r:
                    ready = await r.json()
                if sorted(ready["peers_alive"]) == ["node1", "node2"]:
                    break
                await asyncio.sleep(0.1)
            assert ready["ready"] and sorted(ready["peers_alive"]) == ["node1", "node2"]
            async with http.post(f"{apis[2]}/v1/broadcasts", json=spec, headers=headers) as r:
                again = await r.json()
            assert again["id"] == broadcast["id"], "the key names the same broadcast on every node"
            await asyncio.sleep(1)
            async with http.get(stats_url) as r:
                stats = await r.json()
        sent = stats["apns"]["accepted_total"] + stats["fcm"]["accepted_total"]
        assert sent == 600 and stats["apns"]["duplicates"] == stats["fcm"]["duplicates"] == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
