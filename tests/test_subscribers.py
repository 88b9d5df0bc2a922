"""Subscriber reads and writes through the Python client."""

from __future__ import annotations

import pytest

from dispatcher.core.errors import StoreRejected
from dispatcher.node.contract import Subscribers
from dispatcher.node.records import Audience, Cursor, Registration, Subscriber


async def test_register_update_read_remove(subscribers: Subscribers) -> None:
    first = await subscribers.put(Registration("tok-a", "u1", "ios", "news", ("sport",), "Europe/Paris", "fr"))
    assert first.origin == 1 and first.topics == ("sport",)  # written by replica 1, this node
    second = await subscribers.put(Registration("tok-a", "u1", "ios", "news", ("sport", "tech")))
    assert second.updated_us > first.updated_us
    await subscribers.put(Registration("tok-b", "u1", "android", "news"))
    assert {s.token for s in await subscribers.of_user("u1")} == {"tok-a", "tok-b"}
    got = await subscribers.get("tok-a")
    assert got is not None and got.topics == ("sport", "tech") and got.tz == "UTC"
    assert await subscribers.remove("tok-a") is True
    assert await subscribers.get("tok-a") is None
    assert await subscribers.remove("tok-a") is False
    assert [s.token for s in await subscribers.of_user("u1")] == ["tok-b"]


async def test_invalid_registration_is_refused(subscribers: Subscribers) -> None:
    """Refused with our code for a bad argument (10001) and a message that
    names the field, for the client."""
    cases = [
        (Registration("tok", "u", "blackberry", "news"), "platform must be 'ios' or 'android', got \"blackberry\""),  # type: ignore[arg-type]
        (Registration("", "u", "ios", "news"), 'token must be a non-empty string, got ""'),
        (Registration("tok", "", "ios", "news"), 'user_id must be a non-empty string, got ""'),
        (Registration("tok", "u", "ios", "news", ("sport", "")), 'topics[2] must be a non-empty string, got ""'),
    ]
    for registration, problem in cases:
        with pytest.raises(StoreRejected) as e:
            await subscribers.put(registration)
        assert e.value.code == 10001 and str(e.value) == "subscriber: " + problem


async def pages(subscribers: Subscribers, audience: Audience, batch: int,
                after: Cursor | None = None) -> list[list[Subscriber]]:
    out = []
    while True:
        rows, after = await subscribers.page(after, batch, audience)
        if rows:
            out.append(rows)
        if after is None:
            return out


def cursor(s: Subscriber) -> Cursor:
    return (s.user_id, s.token)


async def test_pages_go_through_the_audience_once_in_order(subscribers: Subscribers) -> None:
    regs = [
        Registration(f"tok-{i:05d}", f"user-{i % 997:04d}", "ios" if i % 3 else "android", "news",
                     ("breaking",) if i % 2 else ("sport",))
        for i in range(5000)
    ]
    for start in range(0, len(regs), 1000):
        assert await subscribers.put_many(regs[start:start + 1000]) == 1000
    audience = Audience(app="news", platform="ios", topics=("breaking",))
    got = await pages(subscribers, audience, 300)
    seen = [s for page in got for s in page]
    expected = {r.token for r in regs if r.platform == "ios" and "breaking" in r.topics}
    assert len(seen) == len(expected) and {s.token for s in seen} == expected
    assert [cursor(s) for s in seen] == sorted(cursor(s) for s in seen)
    assert len(got) > 1 and all(len(p) <= 300 for p in got)
    # Resuming from a cursor continues exactly where a page ended.
    rest = [s for page in await pages(subscribers, audience, 300, cursor(seen[99])) for s in page]
    assert rest == seen[100:]
