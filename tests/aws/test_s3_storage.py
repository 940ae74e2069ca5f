"""S3Storage and S3Storages against moto's server: what is stored is what was given, large
files go up in parts, and every failure is a StorageError that says where."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from support.moto_server import MotoServer, free_port, unique_name

from downloader.config.settings import Settings
from downloader.delivery import aws
from downloader.errors import StorageError

pytestmark = pytest.mark.aws

MIB = 1 << 20
KEY = "6QE/6QEywYsd0jrKAg"


def write_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def object_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_store_keeps_bytes_content_type_and_metadata(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    extra = '{"Shop": "skroutz", "price": 12.9, "count": 3, "flag": true, "name": "Καλημέρα"}'
    data = write_file(tmp_path / "job.tmp", 64 * 1024)
    storage = aws.S3Storage(bucket, "us-east-1", moto.url)

    storage.store(tmp_path / "job.tmp", KEY, content_type="image/png", metadata=aws.s3_metadata(extra))

    answer = s3.get_object(Bucket=bucket, Key=KEY)
    assert answer["Body"].read() == data
    assert answer["ContentType"] == "image/png"
    assert answer["Metadata"] == aws.s3_metadata(extra)
    assert answer["Metadata"] == {
        "shop": "skroutz",
        "price": "12",
        "count": "3",
        "name": "%CE%9A%CE%B1%CE%BB%CE%B7%CE%BC%CE%AD%CF%81%CE%B1",
    }


def test_store_without_content_type_or_metadata_sends_none(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    write_file(tmp_path / "job.tmp", 10)
    aws.S3Storage(bucket, "us-east-1", moto.url).store(tmp_path / "job.tmp", KEY)

    head = s3.head_object(Bucket=bucket, Key=KEY)
    assert head["Metadata"] == {}
    assert head["ContentType"] == "binary/octet-stream"  # S3's default: boto3 guessed nothing


def test_a_file_above_the_threshold_goes_up_in_parts(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    data = write_file(tmp_path / "big.tmp", 12 * MIB)
    storage = aws.S3Storage(bucket, "us-east-1", moto.url, multipart_threshold=5 * MIB)

    storage.store(tmp_path / "big.tmp", KEY, content_type="video/mp4", metadata={"shop": "x"})

    head = s3.head_object(Bucket=bucket, Key=KEY)
    # A multipart object's ETag is "<md5 of the parts' md5s>-<number of parts>": 5 + 5 + 2 MiB.
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == 12 * MIB
    assert head["ContentType"] == "video/mp4"
    assert head["Metadata"] == {"shop": "x"}
    assert object_bytes(s3, bucket, KEY) == data


def test_a_file_below_the_threshold_goes_up_whole(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    data = write_file(tmp_path / "job.tmp", 5 * MIB - 1)
    aws.S3Storage(bucket, "us-east-1", moto.url, multipart_threshold=5 * MIB).store(tmp_path / "job.tmp", KEY)

    head = s3.head_object(Bucket=bucket, Key=KEY)
    assert "-" not in head["ETag"]
    assert object_bytes(s3, bucket, KEY) == data


def test_storing_twice_is_harmless_and_the_last_wins(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    storage = aws.S3Storage(bucket, "us-east-1", moto.url)
    write_file(tmp_path / "job.tmp", 1000)
    storage.store(tmp_path / "job.tmp", KEY)
    second = write_file(tmp_path / "job.tmp", 2000)

    storage.store(tmp_path / "job.tmp", KEY, metadata={"run": "2"})

    assert object_bytes(s3, bucket, KEY) == second
    assert s3.head_object(Bucket=bucket, Key=KEY)["Metadata"] == {"run": "2"}
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [KEY]


def test_concurrent_first_uses_share_one_client(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[Any] = []
    real_client = aws._client

    def counting_client(*args: Any, **kwargs: Any) -> Any:
        created.append(real_client(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(aws, "_client", counting_client)
    storage = aws.S3Storage(bucket, "us-east-1", moto.url)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def upload(n: int) -> None:
        write_file(tmp_path / f"{n}.tmp", 1000 + n)
        start.wait()
        try:
            storage.store(tmp_path / f"{n}.tmp", f"key/{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert len(created) == 1
    sizes = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert sizes == {f"key/{n}": 1000 + n for n in range(8)}


def test_store_leaves_the_temporary_file_to_the_caller(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    data = write_file(tmp_path / "job.tmp", 100)
    aws.S3Storage(bucket, "us-east-1", moto.url).store(tmp_path / "job.tmp", KEY)
    assert (tmp_path / "job.tmp").read_bytes() == data


def test_delete_removes_the_object(moto: MotoServer, s3: Any, bucket: str, tmp_path: Path) -> None:
    storage = aws.S3Storage(bucket, "us-east-1", moto.url)
    write_file(tmp_path / "job.tmp", 100)
    storage.store(tmp_path / "job.tmp", KEY)

    storage.delete(KEY)

    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key=KEY)


def test_deleting_a_missing_key_is_fine(moto: MotoServer, s3: Any, bucket: str) -> None:
    aws.S3Storage(bucket, "us-east-1", moto.url).delete("abc/abcdefgh")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_deleting_from_a_missing_bucket_is_a_storage_error(moto: MotoServer) -> None:
    missing = unique_name("missing")
    with pytest.raises(StorageError, match=rf"deleting s3://{missing}/{KEY}: NoSuchBucket"):
        aws.S3Storage(missing, "us-east-1", moto.url).delete(KEY)


def test_check_writable_passes_for_an_existing_bucket(moto: MotoServer, bucket: str) -> None:
    aws.S3Storage(bucket, "us-east-1", moto.url).check_writable()


def test_check_writable_names_a_missing_bucket(moto: MotoServer) -> None:
    missing = unique_name("missing")
    with pytest.raises(StorageError, match=rf"S3 bucket '{missing}'.*does not exist") as caught:
        aws.S3Storage(missing, "us-east-1", moto.url).check_writable()
    assert caught.value.__cause__ is not None  # the AWS error is kept for the log


def test_an_upload_to_a_missing_bucket_fails(moto: MotoServer, tmp_path: Path) -> None:
    missing = unique_name("missing")
    write_file(tmp_path / "job.tmp", 100)
    with pytest.raises(StorageError, match=rf"uploading s3://{missing}/{KEY}: .*NoSuchBucket"):
        aws.S3Storage(missing, "us-east-1", moto.url).store(
            tmp_path / "job.tmp", KEY, metadata=aws.s3_metadata('{"a": "b"}')
        )


def test_a_multipart_upload_to_a_missing_bucket_fails(moto: MotoServer, tmp_path: Path) -> None:
    missing = unique_name("missing")
    write_file(tmp_path / "big.tmp", 6 * MIB)
    storage = aws.S3Storage(missing, "us-east-1", moto.url, multipart_threshold=5 * MIB)
    with pytest.raises(StorageError, match=rf"uploading s3://{missing}/{KEY}: .*NoSuchBucket"):
        storage.store(tmp_path / "big.tmp", KEY)


def test_a_missing_temporary_file_is_a_storage_error(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=rf"uploading s3://{bucket}/{KEY}"):
        aws.S3Storage(bucket, "us-east-1", moto.url).store(tmp_path / "gone.tmp", KEY)


def test_an_unreachable_endpoint_is_a_storage_error(tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    storage = aws.S3Storage("some-bucket", "us-east-1", nobody)
    write_file(tmp_path / "job.tmp", 100)
    with pytest.raises(StorageError, match="Could not connect to the endpoint URL"):
        storage.store(tmp_path / "job.tmp", KEY)
    with pytest.raises(StorageError, match="some-bucket"):
        storage.check_writable()


def test_from_settings_uses_the_configured_bucket(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    settings = Settings(
        storage_backend="s3",
        s3_bucket=bucket,
        s3_region="us-east-1",
        s3_endpoint_url=moto.url,
        s3_multipart_threshold_bytes=6 * MIB,
    )
    storage = aws.S3Storage.from_settings(settings)
    assert (storage.bucket, storage.region, storage.endpoint_url) == (bucket, "us-east-1", moto.url)
    assert storage.transfer_config.multipart_threshold == 6 * MIB
    assert storage.transfer_config.multipart_chunksize == 6 * MIB

    data = write_file(tmp_path / "job.tmp", 100)
    storage.check_writable()
    storage.store(tmp_path / "job.tmp", KEY)
    assert object_bytes(s3, bucket, KEY) == data


def test_per_job_storages_are_cached_per_bucket_and_region(moto: MotoServer) -> None:
    storages = aws.S3Storages(moto.url, capacity=2)

    first = storages.get("a", "eu-west-1")
    assert storages.get("a", "eu-west-1") is first
    assert storages.get("a", "eu-central-1") is not first
    assert first.endpoint_url == moto.url

    storages.get("a", "eu-west-1")  # used again: the eu-central-1 one is now the oldest
    storages.get("b", "eu-west-1")  # over capacity: the eu-central-1 one is forgotten
    assert storages.get("a", "eu-west-1") is first
    assert len(storages._storages) == 2 and ("a", "eu-central-1") not in storages._storages


def test_a_per_job_storage_stores_into_its_own_bucket_and_region(
    moto: MotoServer, s3: Any, tmp_path: Path
) -> None:
    bucket = unique_name("job-bucket")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    data = write_file(tmp_path / "job.tmp", 100)
    storages = aws.S3Storages.from_settings(Settings(s3_endpoint_url=moto.url))

    storage = storages.get(bucket, "eu-west-1")
    storage.store(tmp_path / "job.tmp", KEY, metadata={"a": "1"})

    assert storage.client.meta.region_name == "eu-west-1"
    assert object_bytes(s3, bucket, KEY) == data
