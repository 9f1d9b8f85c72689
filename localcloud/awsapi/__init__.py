"""AWS's control-plane API as the local cloud serves it: REST/JSON over HTTP, SigV4-signed, the shapes and
error bodies of botocore's service models for ``iot`` and ``iot-jobs-data``."""
