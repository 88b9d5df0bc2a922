"""Dead letters for operators, over a real node and the fake gateways:
letters made the real way (the gateway's permanent errors), listed by
broadcast and reason, newest first, in pages; re-driven as fresh pushes
that get delivered; purged by scope, with their buried tasks. Scopes and
bad input; letters an older release stored, after an upgrade."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dispatcher.core import metrics
from dispatcher.core.config import Settings
from dispatcher.fakes.faults import Faults
from dispatcher.node.contract import SCHEMA_VERSION, DeadLetters, connect
from dispatcher.node.records import Scope
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess
from dispatcher.node.tasks import SendTask
from dispatcher.service import Dispatcher
from tests.admin import console
from tests.conftest import apns_token
from tests.e2e import BACKEND, MESSAGE, Client, register, start_broadcast, wait_done
from tests.test_send_path import buried, eventually

ROUTES = (("GET", "/v1/dead-letters", None), ("POST", "/v1/dead-letters/redrive", {"all": True}),
          ("POST", "/v1/dead-letters/purge", {"all": True}))


async def letters(api: Client, query: str = "") -> dict[str, Any]:
    status, body = await api.call("GET", "/v1/dead-letters" + query)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def ids(page: dict[str, Any]) -> list[int]:
    return [letter["id"] for letter in page["dead_letters"]]


def handled(action: str) -> float:
    return metrics.DEAD_LETTERS_HANDLED.labels(action)._value.get()  # type: ignore[no-any-return]


async def test_list_redrive_and_purge(node: Dispatcher, api: Client) -> None:
    assert node.fakes is not None
    apns = node.fakes.apns
    await register(node, 20)
    bad_payload = [apns_token(i) for i in (0, 2, 4)]
    apns.faults.set(Faults(answers={**dict.fromkeys(bad_payload, "PayloadTooLarge"), apns_token(6): "BadCollapseId"}))
    b = (await start_broadcast(api, "dead-letters"))["id"]
    done = await wait_done(api, b)
    assert done["progress"]["failed"] == 4 and done["progress"]["delivered"] == 16, done["progress"]
    # A one-off push that fails too, with a ttl that will have passed by its re-drive.
    one_off = apns_token(8)
    apns.faults.set(Faults(answers={one_off: "PayloadTooLarge"}))
    pushed = time.monotonic()
    status, body = await api.call("POST", "/v1/pushes", key=BACKEND,
                                  json={"token": one_off, "message": MESSAGE, "ttl_s": 3})
    assert status == 202, body
    await eventually(lambda: _count(api, 5), what="five dead letters")

    everything = await letters(api)
    assert len(ids(everything)) == 5 and ids(everything) == sorted(ids(everything), reverse=True), "newest first"
    assert everything["next_before"] is None
    newest = everything["dead_letters"][0]
    assert {k: newest[k] for k in ("tube", "reason", "broadcast", "token", "app", "attempt", "redrivable")} == {
        "tube": "ios", "reason": "PayloadTooLarge", "broadcast": None, "token": one_off, "app": "news",
        "attempt": 0, "redrivable": True}
    assert abs(newest["created"] - time.time()) < 60
    of_b = await letters(api, f"?broadcast={b}")
    assert {d["token"] for d in of_b["dead_letters"]} == {*bad_payload, apns_token(6)}
    assert {d["broadcast"] for d in of_b["dead_letters"]} == {b}
    assert len(ids(await letters(api, "?reason=PayloadTooLarge"))) == 4, "three of the broadcast's, the one-off"
    both = await letters(api, f"?broadcast={b}&reason=BadCollapseId")
    assert [d["token"] for d in both["dead_letters"]] == [apns_token(6)]
    pages, before = [], ""
    while True:
        page = await letters(api, "?limit=2" + before)
        pages.append(ids(page))
        if page["next_before"] is None:
            break
        before = f"&before={page['next_before']}"
    assert pages == [ids(everything)[:2], ids(everything)[2:4], ids(everything)[4:]], pages

    apns.faults.set(Faults())  # the cause is fixed
    redriven = handled("redriven")
    status, body = await api.call("POST", "/v1/dead-letters/redrive",
                                  json={"broadcast": b, "reason": "PayloadTooLarge"})
    assert status == 200 and body == {"redriven": 3, "unsendable": [], "missing": [], "next_before": None}, body
    # The broadcast stays done (a state never moves back); its progress
    # counts the re-driven pushes as pending until they settle.

    async def settled_again() -> bool:
        progress = (await api.call("GET", f"/v1/broadcasts/{b}"))[1]["progress"]
        return bool(progress["pending"] == 0 and progress["delivered"] == 19)

    await eventually(settled_again, what="the re-driven pushes delivered")
    status, done = await api.call("GET", f"/v1/broadcasts/{b}")
    assert done["state"] == "done" and done["progress"]["failed"] == 1, done
    assert all(apns.counters.accepted[t] == 1 for t in bad_payload), "each re-driven push delivered once"

    await asyncio.sleep(max(0.0, pushed + 3.5 - time.monotonic()))  # the one-off's ttl is over
    got = apns.counters.accepted[one_off]  # the broadcast's push
    status, body = await api.call("POST", "/v1/dead-letters/redrive", json={"ids": [newest["id"], 999]})
    assert status == 200 and (body["redriven"], body["missing"]) == (1, [999]), body
    await eventually(lambda: apns.counters.accepted[one_off] == got + 1, what="the one-off delivered, not expired")
    assert handled("redriven") == redriven + 4

    purged = handled("purged")
    assert await buried(node) == 1, "the last letter's task is still buried"
    status, body = await api.call("POST", "/v1/dead-letters/purge", json={"reason": "BadCollapseId"})
    assert status == 200 and body == {"purged": 1, "missing": [], "next_before": None}, body
    assert ids(await letters(api)) == [] and await buried(node) == 0, "the letter and its buried task are gone"
    assert handled("purged") == purged + 1
    assert apns.counters.accepted[apns_token(6)] == 0, "a purged letter is never sent"


async def _count(api: Client, n: int) -> bool:
    return len(ids(await letters(api))) == n


async def test_a_call_takes_a_bounded_step_and_says_where_to_go_on(node: Dispatcher, api: Client) -> None:
    assert node.fakes is not None
    await register(node, 10)
    node.fakes.apns.faults.set(Faults(answers=dict.fromkeys((apns_token(i) for i in range(0, 10, 2)), "BadPriority")))
    await wait_done(api, (await start_broadcast(api, "steps"))["id"])
    assert len(ids(await letters(api))) == 5
    status, first = await api.call("POST", "/v1/dead-letters/purge", json={"all": True, "limit": 2})
    assert status == 200 and first["purged"] == 2 and first["next_before"] is not None, first
    status, rest = await api.call("POST", "/v1/dead-letters/purge",
                                  json={"all": True, "limit": 2, "before": first["next_before"]})
    assert status == 200 and rest["purged"] == 2 and rest["next_before"] is not None, rest
    left = ids(await letters(api))
    assert len(left) == 1 and left[0] < rest["next_before"], "the newest went first"


async def test_scopes_are_admin(api: Client) -> None:
    for method, path, body in ROUTES:
        status, answer = await api.call(method, path, key=None, json=body)
        assert status == 401 and answer["fields"][0]["field"] == "Authorization", (path, answer)
        status, answer = await api.call(method, path, key=BACKEND, json=body)
        assert status == 403 and answer["fields"][0]["field"] == "Authorization", (path, answer)


async def test_bad_input_names_the_field(api: Client) -> None:
    queries = {"?limit=0": "limit", "?limit=x": "limit", "?before=0": "before", "?before=1.5": "before",
               f"?before={10**14}": "before", "?broadcast=nope": "broadcast", "?reason=": "reason",
               "?reason=" + "r" * 1001: "reason", "?limit=1&limit=2": "limit"}
    for query, field in queries.items():
        status, body = await api.call("GET", "/v1/dead-letters" + query)
        assert status == 400 and [f["field"] for f in body["fields"]] == [field], (query, body)
    bodies: list[tuple[dict[str, Any], set[str]]] = [
        ({}, {"ids", "broadcast", "reason", "all"}),
        ({"all": False}, {"ids", "broadcast", "reason", "all"}),
        ({"all": "yes"}, {"all"}),
        ({"ids": []}, {"ids"}),
        ({"ids": [0]}, {"ids.0"}),
        ({"ids": ["1"]}, {"ids.0"}),
        ({"ids": list(range(1, 1002))}, {"ids"}),
        ({"broadcast": "b_1"}, {"broadcast"}),
        ({"all": True, "limit": 1001}, {"limit"}),
        ({"all": True, "before": 0}, {"before"}),
        ({"all": True, "before": 10**14}, {"before"}),
        ({"all": True, "everything": True}, {"everything"}),
    ]
    for path in ("/v1/dead-letters/redrive", "/v1/dead-letters/purge"):
        for body, fields in bodies:
            status, answer = await api.call("POST", path, json=body)
            assert status == 400 and {f["field"] for f in answer["fields"]} == fields, (path, body, answer)
    for ttl in (0, 28 * 86400 + 1, 1.5, "60"):
        status, answer = await api.call("POST", "/v1/dead-letters/redrive", json={"all": True, "ttl_s": ttl})
        assert status == 400 and [f["field"] for f in answer["fields"]] == ["ttl_s"], (ttl, answer)
    status, answer = await api.call("POST", "/v1/dead-letters/purge", json={"ids": [10**14 - 1]})
    assert status == 200 and answer["missing"] == [10**14 - 1], "the largest id is taken"


async def test_letters_of_an_older_release_are_listed_by_broadcast_after_the_upgrade(
        settings: Settings, tarantool: TarantoolProcess) -> None:
    """The data directory of a release at schema version 4: the space without
    the broadcast field and its indexes, and letters in the old shape."""
    data = settings.node.data_dir
    for index in ("broadcast_reason", "reason", "broadcast"):
        console(data, f"box.space.dead_letter.index.{index}:drop()")
    console(data, "local f = box.space.dead_letter:format() table.remove(f) box.space.dead_letter:format(f)")
    console(data, "box.space._schema:replace({'dispatcher_schema_version', 4})")
    b = "b_" + "0" * 24
    for n, task in enumerate((f"{{'b', '{b}', 'tok-1', 'ios', 1, 2, 1, 'news'}}",
                              "{'m', {message = {title = 'x'}}, 'tok-2', 'ios', 1, 0, 0}", "{'garbage'}"), start=1):
        console(data, f"box.space.dead_letter:insert({{{n}, 1000, 'ios', 'BadPayload', "
                      f"{{task_id = {n}, task = {task}}}}})")
    tarantool.kill()
    tarantool.start()
    store = Store(settings.tarantool)
    assert (await connect(store))["schema_version"] == SCHEMA_VERSION
    try:
        dead = DeadLetters(store)
        of_b = await dead.list(Scope(broadcast=b))
        assert [(d.id, d.broadcast, d.task and d.task.token) for d in of_b.letters] == [(1, b, "tok-1")]
        every = await dead.list()
        assert [(d.id, d.broadcast, d.task is None) for d in every.letters] == [
            (3, None, True), (2, None, False), (1, b, False)]
        assert every.letters[-1].task == SendTask.from_wire(["b", b, "tok-1", "ios", 1, 2, 1, "news"])
    finally:
        await store.close()


async def test_documented(api: Client) -> None:
    status, doc = await api.call("GET", "/v1/openapi.json", key=None)
    assert status == 200
    listing = doc["paths"]["/v1/dead-letters"]["get"]
    assert listing["x-scope"] == "admin" and listing["tags"] == ["dead-letters"]
    assert [p["name"] for p in listing["parameters"]] == ["broadcast", "reason", "before", "limit"]
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeadLetterListOut"}
    for path, model, out in (("redrive", "RedriveIn", "RedriveOut"), ("purge", "DeadLettersIn", "PurgeOut")):
        op = doc["paths"][f"/v1/dead-letters/{path}"]["post"]
        assert op["x-scope"] == "admin" and {"200", "400", "401", "403", "503"} <= set(op["responses"])
        assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{out}"}
    assert "429" in doc["paths"]["/v1/dead-letters/redrive"]["post"]["responses"], "a re-drive adds work"
    scope = doc["components"]["schemas"]["DeadLettersIn"]
    assert {tuple(branch["required"]) for branch in scope["anyOf"]} == {("ids",), ("broadcast",), ("reason",), ("all",)}
