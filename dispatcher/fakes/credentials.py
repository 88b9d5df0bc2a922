"""Key material for the fakes: a CA and a server certificate, an APNs signing
key (.p8) with its key id and team id, and one FCM service-account file per
fake project (its own key and client_email), whose token_uri points at the
fake OAuth endpoint. Written into one directory so that a sender can be
configured from the paths alone. Private keys are keys, fake or not: the
directory and every file are their owner's alone."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dispatcher.core.config import ApnsSettings, FcmSettings
from dispatcher.core.files import private_dir, write_private

_ID_CHARS = string.ascii_uppercase + string.digits
# The fake FCM's projects, one per demo app. The first is the one callers
# that know a single project get (fcm_project_id, fcm_service_account_path).
FCM_PROJECTS = ("fake-news", "fake-horoscope")


def _ten_chars() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(10))


@dataclass(frozen=True)
class FakeCredentials:
    directory: Path
    ca_path: Path
    server_cert_path: Path  # certificate chain and private key, PEM
    apns_client_cert_path: Path  # for APNs certificate auth: certificate and key, PEM
    apns_key_path: Path
    apns_key_id: str
    apns_team_id: str
    fcm_projects: dict[str, Path]  # project id -> its service-account file

    @classmethod
    def from_directory(cls, directory: Path, apns_key_id: str, apns_team_id: str) -> FakeCredentials:
        """The credentials another process (``dispatcher fake-gateways``) wrote."""
        return cls(directory, directory / "ca.pem", directory / "server.pem", directory / "apns-client.pem",
                   directory / f"AuthKey_{apns_key_id}.p8", apns_key_id, apns_team_id,
                   {project: fcm_account_path(directory, project) for project in FCM_PROJECTS})

    @property
    def fcm_project_id(self) -> str:
        return FCM_PROJECTS[0]

    @property
    def fcm_service_account_path(self) -> Path:
        return self.fcm_projects[FCM_PROJECTS[0]]

    def apns_public_key(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_pem_private_key(self.apns_key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.public_key()

    def fcm_service_account(self, project: str = FCM_PROJECTS[0]) -> dict[str, str]:
        account: dict[str, str] = json.loads(self.fcm_projects[project].read_text())
        return account

    def apns_settings(self, port: int, **overrides: Any) -> ApnsSettings:
        """Sender settings for the fake APNs on ``port`` with these keys."""
        fields: dict[str, Any] = {"key_path": self.apns_key_path, "key_id": self.apns_key_id,
                                  "team_id": self.apns_team_id, "topic": "com.example.news",
                                  "endpoint": f"127.0.0.1:{port}", "ca_path": self.ca_path}
        return ApnsSettings(**{**fields, **overrides})

    def fcm_settings(self, port: int, project: str = FCM_PROJECTS[0], **overrides: Any) -> FcmSettings:
        """Sender settings for the fake FCM on ``port`` with ``project``'s
        service account."""
        fields: dict[str, Any] = {"service_account_path": self.fcm_projects[project], "ca_path": self.ca_path,
                                  "endpoint": f"https://127.0.0.1:{port}"}
        return FcmSettings(**{**fields, **overrides})

    def set_token_uri(self, token_uri: str) -> None:
        """Points every service account at the fake OAuth endpoint (known
        only once that server listens)."""
        for project, path in self.fcm_projects.items():
            account = self.fcm_service_account(project)
            account["token_uri"] = token_uri
            write_private(path, json.dumps(account, indent=2))

    def fcm_public_key(self, project: str = FCM_PROJECTS[0]) -> rsa.RSAPublicKey:
        pem = self.fcm_service_account(project)["private_key"].encode()
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.public_key()


def make_credentials(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                     apns_ids: tuple[str | None, str | None] = (None, None)) -> FakeCredentials:
    """Creates fresh key material under ``directory`` (made if missing)."""
    private_dir(directory)
    ca = trustme.CA()
    ca_path = directory / "ca.pem"
    write_private(ca_path, ca.cert_pem.bytes())
    server = ca.issue_cert(*hosts)
    server_cert_path = directory / "server.pem"
    write_private(server_cert_path, server.private_key_and_cert_chain_pem.bytes())
    client_cert_path = directory / "apns-client.pem"
    write_private(client_cert_path, ca.issue_cert("com.example.news").private_key_and_cert_chain_pem.bytes())

    apns_key = ec.generate_private_key(ec.SECP256R1())
    key_id, team_id = apns_ids[0] or _ten_chars(), apns_ids[1] or _ten_chars()
    apns_key_path = directory / f"AuthKey_{key_id}.p8"
    write_private(
        apns_key_path,
        apns_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    )

    projects = {project: _write_service_account(directory, project) for project in FCM_PROJECTS}
    return FakeCredentials(directory, ca_path, server_cert_path, client_cert_path, apns_key_path, key_id, team_id,
                           projects)


def fcm_account_path(directory: Path, project: str) -> Path:
    # The first project's file keeps the name it had when there was one.
    suffix = "" if project == FCM_PROJECTS[0] else f"-{project}"
    return directory / f"fcm-service-account{suffix}.json"


def _write_service_account(directory: Path, project: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
        "client_email": f"dispatcher@{project}.iam.gserviceaccount.com",
        "client_id": str(secrets.randbelow(10**20)),
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path = fcm_account_path(directory, project)
    write_private(path, json.dumps(account, indent=2))
    return path
