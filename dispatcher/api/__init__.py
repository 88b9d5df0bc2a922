"""The HTTP API (aiohttp): JSON under /v1, its OpenAPI document at
/v1/openapi.json and a documentation page at /v1/docs.

Keys and scopes: "backend" registers devices and sends one-off pushes,
"admin" runs broadcasts and handles dead letters. Every bad input is a 4xx naming the field at
fault; a full node answers 429 with Retry-After; slow clients are dropped.

- models.py: the rules for each input, request and response models
- inputs.py: reading headers, parameters and bodies safely
- auth.py: API keys
- pressure.py: 429 by queued pushes and by memory
- problems.py: the error shape and what each exception becomes
- routes.py: the route table and the handlers (Api)
- openapi.py: the document, from the table and the models
- guard.py: slow clients and the connection cap
- docs.py: the documentation page
"""

from dispatcher.api.routes import Api, curl_example

__all__ = ["Api", "curl_example"]
