"""The workers: send pipelines, fan-out, settling, peers and per-app gates;
they use node/ and gateways/, never the API."""
