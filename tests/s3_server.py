"""A real S3-protocol server on 127.0.0.1 for the storage tests: moto's standalone server.

pyarrow reaches it as any on-premise S3 (MinIO, Ceph) is reached, through the storage URI's
query string (pyarrow ignores ``AWS_ENDPOINT_URL``):
``s3://bucket/prefix?endpoint_override=127.0.0.1:PORT&scheme=http&region=us-east-1``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from ports import free_port

REGION = "us-east-1"
# dummy credentials: moto accepts any; set for the test process and every process it starts,
# and the EC2 metadata lookup (a network call) is switched off
ENV = {"AWS_ACCESS_KEY_ID": "magmax-test-key", "AWS_SECRET_ACCESS_KEY": "magmax-test-secret",
       "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass(frozen=True)
class S3Server:
    port: int
    bucket: str

    @property
    def query(self) -> str:
        return f"?endpoint_override=127.0.0.1:{self.port}&scheme=http&region={REGION}"

    def uri(self, prefix: str = "") -> str:
        """``s3://bucket/prefix?endpoint_override=...``: a storage URI on this server."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/") + self.query


@contextlib.contextmanager
def s3_server(bucket: str = "magmax") -> Iterator[S3Server]:
    """Start moto's server on a free loopback port with one empty bucket; stop it afterwards.

    The caller sets ``ENV`` (credentials) in its environment first.
    """
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        admin = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region=REGION,
                                  access_key=ENV["AWS_ACCESS_KEY_ID"], secret_key=ENV["AWS_SECRET_ACCESS_KEY"],
                                  allow_bucket_creation=True)
        admin.create_dir(bucket)
        yield S3Server(port, bucket)
    finally:
        server.stop()
