"""Where the jobs read and write: local paths or S3 (any endpoint), through pyarrow filesystems.

Credentials follow the standard AWS chain (environment, shared config files, instance
profiles), resolved by each process that touches S3, so no key travels with a task. The endpoint
comes from `--s3-endpoint` or the AWS SDK's own variables (`AWS_ENDPOINT_URL_S3`,
`AWS_ENDPOINT_URL`), which pyarrow itself ignores.
"""

from __future__ import annotations

import contextlib
import copyreg
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# Transient S3 errors (throttling, 5xx, resets) are retried by the AWS SDK inside pyarrow, with
# its "default" strategy: the "standard" one (pyarrow's own default) stops retrying once a
# per-client retry quota is spent, so a long-lived client under a burst of errors fails every
# request after it (tests/test_s3_faults.py).
S3_MAX_ATTEMPTS = 10


def _retry_strategy() -> pafs.S3RetryStrategy:
    return pafs.AwsDefaultS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS)


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    endpoint = endpoint or next((os.environ[v] for v in ENDPOINT_ENV if os.environ.get(v)), None)
    options: dict[str, object] = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        "retry_strategy": _retry_strategy(),
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})


def _rebuild_s3(options: dict[str, Any]) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(**options, retry_strategy=_retry_strategy())


def _reduce_s3(fs: pafs.S3FileSystem) -> tuple[Any, ...]:
    _, (options,) = fs.__reduce__()
    return _rebuild_s3, (options,)


# pyarrow pickles an S3FileSystem without its retry strategy, so every Ray task that received
# one retried with the SDK's default (3 attempts and the quota above). Registered here, the
# strategy is rebuilt wherever a filesystem is unpickled: cloudpickle consults copyreg first.
copyreg.pickle(pafs.S3FileSystem, _reduce_s3)


@dataclass(frozen=True)
class Location:
    """A filesystem and a path on it; `uri` is what the user wrote, for messages."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *parts])
        return Location(self.fs, path, "/".join([self.uri.rstrip("/"), *parts]))

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read().decode()

    def write_text(self, text: str) -> None:
        write_bytes_atomic(self, text.encode())


def locate(uri: str, s3_endpoint: str | None = None) -> Location:
    if uri.startswith("s3://"):
        return Location(s3_filesystem(s3_endpoint), uri.removeprefix("s3://").rstrip("/"), uri)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported location {uri!r}: use a local path or s3://bucket/prefix")
    path = os.path.abspath(uri.removeprefix("file://"))
    return Location(pafs.LocalFileSystem(), path, uri)


def visible_files(location: Location) -> list[str]:
    """Relative paths of the files under a directory, skipping names that start with `.` or
    `_` at any level (staging, job records, temporaries), as Parquet readers do."""
    base = location.path.rstrip("/") + "/"
    found = []
    for entry in location.fs.get_file_info(pafs.FileSelector(location.path, recursive=True)):
        relative = entry.path.removeprefix(base)
        hidden = any(part.startswith((".", "_")) for part in relative.split("/"))
        if entry.type == pafs.FileType.File and not hidden:
            found.append(relative)
    return found


def list_parquet(location: Location) -> list[Location]:
    """The Parquet files under a directory (recursively, hidden ones skipped), or the file."""
    info = location.fs.get_file_info(location.path)
    if info.type == pafs.FileType.File:
        return [location]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {location.uri}")
    files = [location.join(r) for r in visible_files(location) if r.endswith(".parquet")]
    return sorted(files, key=lambda f: f.path)


def _is_local(location: Location) -> bool:
    return isinstance(location.fs, pafs.LocalFileSystem)


def write_bytes_atomic(location: Location, data: bytes) -> None:
    with _atomic_local_file(location) as temp, open(temp, "wb") as handle:
        handle.write(data)


def write_table_atomic(
    location: Location,
    tables: Iterable[pa.Table],
    schema: pa.Schema,
    *,
    footer: Callable[[], dict[bytes, bytes]] | None = None,
    upload: Callable[[Callable[..., None]], Callable[..., None]] | None = None,
) -> None:
    """One Parquet file from `tables` (consumed one at a time), visible only once complete.
    `footer()`, called once every table is written, adds key-value metadata to the file's
    footer (what is known only at the end: totals of a stream). `upload` wraps the copy of the
    finished local file to S3 (a retry: the rows themselves need not be produced again)."""
    with (
        _atomic_local_file(location, upload) as temp,
        pq.ParquetWriter(temp, schema) as writer,
    ):
        for table in tables:
            writer.write_table(table.cast(schema))
        if footer is not None:
            writer.add_key_value_metadata(footer())


@contextlib.contextmanager
def _atomic_local_file(
    location: Location, upload: Callable[[Callable[..., None]], Callable[..., None]] | None = None
) -> Iterator[str]:
    """A local file to fill, then published whole: renamed into place on a local filesystem,
    uploaded in one stream to S3 (an object appears only when its upload completes; a writer
    killed mid-upload leaves nothing visible)."""
    if _is_local(location):
        parent, _, name = location.path.rpartition("/")
        os.makedirs(parent, exist_ok=True)
        temp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            yield temp
            os.replace(temp, location.path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        return
    with tempfile.TemporaryDirectory(prefix="routeray-") as scratch:
        temp = os.path.join(scratch, "part")
        yield temp
        copy = upload(_upload) if upload else _upload
        copy(temp, location)


def _upload(path: str, location: Location) -> None:
    with open(path, "rb") as source, location.fs.open_output_stream(location.path) as sink:
        shutil.copyfileobj(source, sink, length=8 << 20)
