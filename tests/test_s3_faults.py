"""The fault layer in front of the loopback S3 does what the fault tests rely on: it delays and
fails the requests its rules choose, holds the requests for chosen keys until the test releases
them, the SDK's retries get through, and it counts what it did."""

from __future__ import annotations

import contextlib
import http.client
import pickle
from concurrent.futures import ThreadPoolExecutor

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from batch_jobs.storage import s3_filesystem
from tests.support.jobs import orphaned_connections, wait_until
from tests.support.local_s3 import TEST_CREDENTIALS, put_table
from tests.support.s3_faults import FaultRule, object_key


def no_retries(local_s3, access_key: str = TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"]):
    return boto3.client(
        "s3",
        endpoint_url=local_s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
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
        client.get_object(Bucket=bucket, Key="out/a")
        assert f.delayed == 0
        client.put_object(Bucket=bucket, Key="in/b", Body=b"b")
        assert f.delayed == 0
        client.get_object(Bucket=bucket, Key="in/a")
        assert f.delayed == 1
    assert not f.injected


def test_a_hold_keeps_its_keys_requests_until_released_then_slows_them_down(local_s3):
    bucket = local_s3.bucket()
    client = no_retries(local_s3)
    key = "out/day=07/part-0.parquet"
    # The pool outlives the hold: its end waits for what the hold keeps.
    with ThreadPoolExecutor(1) as pool, local_s3.faults.hold("out/day=07/") as hold:
        upload = pool.submit(client.put_object, Bucket=bucket, Key=key, Body=b"late")
        wait_until(lambda: hold.held == 1, "the upload to be held")
        # Other keys pass while it waits, and it waits.
        client.put_object(Bucket=bucket, Key="out/day=06/part-0.parquet", Body=b"x")
        assert not upload.done() and local_s3.faults.holding == 1
        hold.release()
        with pytest.raises(ClientError) as caught:
            upload.result(timeout=60)
        assert caught.value.response["Error"]["Code"] == "SlowDown"
        assert local_s3.faults.holding == 0
        # Once released, the hold stops nothing more.
        client.put_object(Bucket=bucket, Key=key, Body=b"again")
        assert hold.held == 1
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"again"


def test_a_retrying_client_gets_through_once_the_hold_ends(local_s3):
    """The end of the `with` block releases too; the SDK retries the SlowDown and lands."""
    bucket = local_s3.bucket()
    client = local_s3.client()
    with ThreadPoolExecutor(1) as pool:
        with local_s3.faults.hold("out/") as hold:
            upload = pool.submit(client.put_object, Bucket=bucket, Key="out/a", Body=b"a")
            wait_until(lambda: hold.held == 1, "the upload to be held")
            assert not upload.done()
        upload.result(timeout=60)
    assert client.get_object(Bucket=bucket, Key="out/a")["Body"].read() == b"a"
    assert hold.held == 1


def test_a_held_upload_whose_client_died_never_lands(local_s3):
    bucket = local_s3.bucket()
    with local_s3.faults.hold("out/") as hold:
        # A whole upload sent (moto takes unsigned requests), then the client is gone.
        conn = http.client.HTTPConnection("127.0.0.1", local_s3.port, timeout=60)
        conn.request("PUT", f"/{bucket}/out/a", body=b"sent before dying")
        wait_until(lambda: hold.held == 1, "the upload to be held")
        conn.close()
        # The server still has the request, its client gone.
        wait_until(lambda: orphaned_connections(local_s3.port), "the client's end to close")
        assert hold.held == 1 and local_s3.faults.holding == 1
        hold.release()
        wait_until(lambda: local_s3.faults.in_flight == 0, "the server to answer the request")
    wait_until(lambda: not orphaned_connections(local_s3.port), "the server to close it")
    listing = local_s3.client().list_objects_v2(Bucket=bucket, Prefix="out/")
    assert "Contents" not in listing


def test_holds_and_rules_for_one_signer_let_the_others_through(local_s3):
    """What lets a test hold the reads of a job's Ray workers but not those of its driver, or
    fail a job's requests but not its own: each signs with its own environment's key."""
    bucket = local_s3.bucket()
    driver, worker = no_retries(local_s3, "the-driver"), no_retries(local_s3, "a-worker")
    driver.put_object(Bucket=bucket, Key="in/a", Body=b"a")
    with ThreadPoolExecutor(1) as pool:
        with local_s3.faults.hold("in/", access_key="a-worker") as hold:
            read = pool.submit(worker.get_object, Bucket=bucket, Key="in/a")
            wait_until(lambda: hold.held == 1, "the worker's read to be held")
            assert driver.get_object(Bucket=bucket, Key="in/a")["Body"].read() == b"a"
            assert not read.done() and hold.held == 1
        with pytest.raises(ClientError, match="SlowDown"):
            read.result(timeout=60)
    # Rules can tell signers apart the same way.
    only_worker = FaultRule(fraction=1.0, kinds=("500",), access_key="a-worker")
    with local_s3.faults.rules(only_worker) as f:
        with pytest.raises(ClientError, match="InternalError"):
            worker.get_object(Bucket=bucket, Key="in/a")
        assert driver.get_object(Bucket=bucket, Key="in/a")["Body"].read() == b"a"
    assert f.matched == 1 and f.injected == {"500": 1}


def test_rules_draw_the_same_faults_in_every_block(local_s3):
    """A block's n-th matching request meets the same fate however many requests earlier
    blocks saw: what lets a test count on its requests meeting every kind of fault."""
    bucket = local_s3.bucket()
    client = no_retries(local_s3)
    client.put_object(Bucket=bucket, Key="in/a", Body=b"a")

    def fates(rule: FaultRule, requests: int) -> list[str]:
        seen = []
        with local_s3.faults.rules(rule) as f:
            for _ in range(requests):
                before = f.injected.copy()
                with contextlib.suppress(ClientError, *DROPPED):
                    client.get_object(Bucket=bucket, Key="in/a")
                seen.append(next(iter(f.injected - before), "ok"))
        return seen

    first = fates(FaultRule(fraction=0.5), 12)
    fates(FaultRule(fraction=0.3), 7)
    assert fates(FaultRule(fraction=0.5), 12) == first
    assert "ok" in first and set(first) - {"ok"}, first


def test_unknown_fault_kind_is_refused(local_s3):
    with (
        pytest.raises(ValueError, match="unknown fault kinds"),
        local_s3.faults.rules(FaultRule(kinds=("teapot",))),
    ):
        pass
