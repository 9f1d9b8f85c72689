"""The local stand-in for AWS IoT: a real Mosquitto with mutual TLS plus a shadow service, supervised.

``roomba-fleet up`` runs it; :mod:`localcloud.testing` starts one for tests.
"""
