"""A real S3 HTTP API on loopback (moto's server), for tests, benchmarks and trying the jobs
without a cloud account. Needs the `dev` extra (moto[server])."""

from __future__ import annotations

import io
import logging
import os
import threading
import uuid
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from routeray.demo.config import free_port
from routeray.demo.prompts import generate_prompts
from tests.support.s3_faults import S3Faults

# moto accepts any key pair; these only have to exist for the AWS credential chain.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "routeray-local",
    "AWS_SECRET_ACCESS_KEY": "routeray-local-secret",
    "AWS_REGION": "us-east-1",
}


def use_test_credentials() -> None:
    """Put the local server's credentials in the environment, unless some are there already.
    Call before Ray starts: its workers inherit the environment and read S3 themselves."""
    for name, value in TEST_CREDENTIALS.items():
        os.environ.setdefault(name, value)


class LocalS3:
    """`with LocalS3() as s3:` starts the server on a free port; `s3.endpoint` is its URL and
    `s3.bucket()` creates a fresh bucket. `s3.faults.rules(...)` injects delays and errors."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.faults = faults = S3Faults(DomainDispatcherApplication(create_backend_app))

        class Handler(MotoRequestHandler):
            def handle(self) -> None:
                with faults.answering():
                    super().handle()

        self._server = make_server(
            "127.0.0.1",
            self.port,
            self.faults,
            threaded=True,
            request_handler=Handler,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LocalS3:
        use_test_credentials()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._thread.join()

    def client(self, access_key: str | None = None) -> Any:
        """A boto3 client; `access_key` signs as another than the environment's (the fault
        layer can tell such a client's requests from a job's)."""
        import boto3

        keys = {}
        if access_key is not None:
            keys = {
                "aws_access_key_id": access_key,
                "aws_secret_access_key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            }
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **keys)

    def bucket(self, prefix: str = "routeray") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def put_table(
    s3: LocalS3, bucket: str, key: str, table: pa.Table, row_group_size: int = 10
) -> None:
    """One Parquet object; small row groups so that a job reads a file in several blocks."""
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    s3.client().put_object(Bucket=bucket, Key=key, Body=sink.getvalue())


def put_archive(s3: LocalS3, bucket: str, files: int, rows: int) -> None:
    """`files` hive-partitioned Parquet files under in/ of `rows` generated prompts each, with
    ids 0 .. files * rows - 1 in order."""
    prompts = generate_prompts(files * rows, seed=11)
    for f in range(files):
        ids = range(f * rows, (f + 1) * rows)
        table = pa.table({"id": list(ids), "prompt": [prompts[i] for i in ids]})
        put_table(s3, bucket, f"in/day={f:02d}/part-0.parquet", table)
