"""Fake APNs and FCM gateways: real TLS, real HTTP/2, the real checks, status
codes and error bodies, fault injection and counters. Tests, the demo and the
benchmarks send to these; nothing here is used when real credentials are set.
"""
