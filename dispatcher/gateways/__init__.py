"""Talking to APNs and FCM: pushes, their HTTP/2 transport, and what each
gateway's answer means. Knows nothing of Tarantool."""
