"""The fault layer in front of the loopback S3 does what the fault tests rely on: it delays and
fails the requests its rules choose, the SDK's retries get through, and it counts what it did."""

from __future__ import annotations

import pickle
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from batch_jobs.storage import s3_filesystem
from tests.support.local_s3 import put_table
from tests.support.s3_faults import FaultRule, object_key


def no_retries(local_s3):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=local_s3.endpoint,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}),
    )


def test_object_key_of_path_style_requests():
    assert object_key("/bucket/in/day%3D01/part-0.parquet") == "in/day=01/part-0.parquet"
    assert object_key("/bucket") == ""
    assert object_key("/bucket/") == ""


DROPPED = (ConnectionClosedError, EndpointConnectionError)
S3_CODES = {"500": "InternalError", "503": "SlowDown"}


@pytest.mark.parametrize(
    ("kind", "error"), [("500", ClientError), ("503", ClientError), ("reset", DROPPED)]
)
def test_each_fault_reaches_a_client_that_does_not_retry(local_s3, kind, error):
    bucket = local_s3.bucket()
    client = no_retries(local_s3)
    client.put_object(Bucket=bucket, Key="in/a", Body=b"hello")
    with local_s3.faults.rules(FaultRule(key_prefix="in/", fraction=1.0, kinds=(kind,))) as f:
        with pytest.raises(error) as caught:
            client.get_object(Bucket=bucket, Key="in/a")
        # Keys the rule does not name pass untouched.
        client.put_object(Bucket=bucket, Key="out/b", Body=b"x")
        assert f.injected == {kind: 1}
    if kind != "reset":
        assert caught.value.response["Error"]["Code"] == S3_CODES[kind]
    # Rules end with their block.
    assert client.get_object(Bucket=bucket, Key="in/a")["Body"].read() == b"hello"


def _as_is(fs):
    return fs


def _pickled(fs):
    return pickle.loads(pickle.dumps(fs))


def _cloudpickled(fs):
    from ray import cloudpickle

    return cloudpickle.loads(cloudpickle.dumps(fs))


@pytest.mark.parametrize("ship", [_as_is, _pickled, _cloudpickled], ids=lambda f: f.__name__)
def test_the_jobs_s3_client_keeps_retrying_through_a_share_of_faults(local_s3, ship):
    """The jobs' S3 client retries every fault, however many: one long-lived client reads
    through dozens of them (AWS's "standard" retry strategy gives up once its quota is spent),
    also after it was pickled on its way to a Ray task (pyarrow pickles no retry strategy)."""
    bucket = local_s3.bucket()
    table = pa.table({"id": list(range(200))})
    put_table(local_s3, bucket, "in/t.parquet", table)
    fs = ship(s3_filesystem(local_s3.endpoint))
    with local_s3.faults.rules(FaultRule(fraction=0.3)) as f:
        for _ in range(40):
            assert pq.read_table(f"{bucket}/in/t.parquet", filesystem=fs).equals(table)
    assert sum(f.injected.values()) > 50


def test_delay_holds_matching_requests_only(local_s3):
    bucket = local_s3.bucket()
    client = local_s3.client()
    client.put_object(Bucket=bucket, Key="in/a", Body=b"a")
    client.put_object(Bucket=bucket, Key="out/a", Body=b"a")
    with local_s3.faults.rules(FaultRule(key_prefix="in/", methods=("GET",), delay_s=0.5)) as f:
        start = time.monotonic()
        client.get_object(Bucket=bucket, Key="out/a")
        fast = time.monotonic() - start
        start = time.monotonic()
        client.get_object(Bucket=bucket, Key="in/a")
        slow = time.monotonic() - start
    assert slow >= 0.5 > fast
    assert f.delayed == 1 and not f.injected


def test_unknown_fault_kind_is_refused(local_s3):
    with (
        pytest.raises(ValueError, match="unknown fault kinds"),
        local_s3.faults.rules(FaultRule(kinds=("teapot",))),
    ):
        pass
