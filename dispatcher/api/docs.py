"""The API's documentation page for people, at /v1/docs: Swagger UI over
/v1/openapi.json, served by the node itself from the files the
swagger-ui-py package ships (Swagger UI 5, which reads OpenAPI 3.1), so it
works with no internet access."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

# The files the page loads, with their content types.
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>dispatcher API</title>
  <link rel="stylesheet" href="/v1/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/v1/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/v1/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                                 validatorUrl: null, tryItOutEnabled: false});
  </script>
</body>
</html>
"""


def _static_dir() -> Path:
    # Found without importing swagger_ui, whose __init__ pulls in its
    # framework adapters and jinja2.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is missing (a dependency of dispatcher)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@cache
def asset(name: str) -> bytes:
    """One of ASSETS, read once."""
    if name not in ASSETS:
        raise KeyError(name)
    return (_static_dir() / name).read_bytes()
