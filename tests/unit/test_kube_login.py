"""kopf logs in with what our own client uses, whichever way the token is spelled."""

from __future__ import annotations

import pytest
from kubernetes import client

from wanka.cluster.kube import connection_settings


@pytest.mark.parametrize("stored", ["Bearer abc123", "bearer abc123", "abc123"])
def test_token_is_passed_without_its_scheme(stored: str) -> None:
    cfg = client.Configuration()
    cfg.host = "https://10.0.0.1:443"
    cfg.api_key = {"authorization": stored}
    cfg.ssl_ca_cert = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    conn = connection_settings(client.ApiClient(cfg))
    assert conn["token"] == "abc123"
    assert conn["server"] == "https://10.0.0.1:443"
    assert conn["ca_path"].endswith("ca.crt") and conn["insecure"] is False
