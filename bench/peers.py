"""The peer a benchmark row compares against: aioapns used as its users
write it (``APNs(...)`` and ``send_notification``), pointed at a fake APNs.

aioapns dials Apple's hosts only; the one change here is the address, set on
its protocol class the way its own sandbox switch does."""

from __future__ import annotations

import ssl

from aioapns import APNs
from aioapns.connection import APNsTLSClientProtocol

from dispatcher.config import ApnsSettings


def bare_aioapns(settings: ApnsSettings) -> APNs:
    """An aioapns client with ``settings``' key, topic, connections and CA."""
    host, _, port = settings.endpoint.rpartition(":")
    tls = ssl.create_default_context(cafile=str(settings.ca_path) if settings.ca_path else None)
    assert settings.key_path is not None
    client = APNs(key=settings.key_path.read_text(), key_id=settings.key_id, team_id=settings.team_id,
                  topic=settings.topic, max_connections=settings.connections, ssl_context=tls)
    client.pool.protocol_class = type("ToFake", (APNsTLSClientProtocol,), {"APNS_SERVER": host,
                                                                           "APNS_PORT": int(port)})
    return client
