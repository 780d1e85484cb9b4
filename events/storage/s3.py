"""S3-compatible backend (AWS S3, R2, MinIO) over boto3, using only standard calls and the standard
credential chain; AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 point it at R2 or MinIO."""

from __future__ import annotations

from collections.abc import Iterator

import boto3

from ..errors import NotFound, PreconditionFailed, StorageError
from .base import Bucket, ObjectInfo
from .s3_common import S3Keys, announce_retries, client_config, translate

_LIBRARY_ERRORS: tuple[type[Exception], ...]
try:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    _LIBRARY_ERRORS = (ClientError, BotoCoreError)
except ImportError:  # pragma: no cover - boto3 is a core dependency
    _LIBRARY_ERRORS = ()
    S3UploadFailedError = OSError


class S3Bucket(Bucket):
    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.k = S3Keys(bucket, prefix)
        self.url = self.k.url
        self.name = bucket
        self.client = client or boto3.session.Session().client("s3", config=client_config())
        announce_retries(self.client, self.url)

    def _call(self, op: str, key: str, **params):
        try:
            return getattr(self.client, op)(**params)
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, op, key, self.k.url) from exc

    def put(self, key, data, content_type="application/octet-stream"):
        return self._call("put_object", key, **self.k.put_params(key, data, content_type))["ETag"]

    def create(self, key, data, content_type="application/octet-stream"):
        params = self.k.put_params(key, data, content_type, if_none_match=True)
        return self._call("put_object", key, **params)["ETag"]

    def replace(self, key, data, etag, content_type="application/octet-stream"):
        params = self.k.put_params(key, data, content_type, if_match=etag)
        try:
            return self._call("put_object", key, **params)["ETag"]
        except NotFound as exc:  # If-Match on a missing key: some stores answer 404; the contract says 412
            raise PreconditionFailed(f"put_object {key}: precondition failed (no such key)") from exc

    def get(self, key):
        response = self._call("get_object", key, **self.k.key_params(key))
        try:
            data = response["Body"].read()
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, "get_object", key, self.k.url) from exc
        return self.k.blob(key, data, response)

    def download(self, key, dest):
        response = self._call("get_object", key, **self.k.key_params(key))
        try:
            with open(dest, "wb") as out:
                for chunk in response["Body"].iter_chunks(1 << 20):
                    out.write(chunk)
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, "get_object", key, self.k.url) from exc
        return response["ETag"]

    def upload(self, key, src, content_type="application/octet-stream", progress=None):
        """boto3's managed transfer: multipart past 8 MiB, parts retried on their own."""
        try:
            self.client.upload_file(str(src), self.k.bucket, self.full_key(key),
                                    ExtraArgs={"ContentType": content_type}, Callback=progress)
        except S3UploadFailedError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, _LIBRARY_ERRORS) else exc
            raise translate(cause, "upload", key, self.k.url) from exc
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, "upload", key, self.k.url) from exc
        except OSError as exc:
            raise StorageError(f"upload {key}: {exc.strerror}") from exc
        return self.head(key).etag

    def head(self, key):
        return self.k.info(key, self._call("head_object", key, **self.k.key_params(key)))

    def list(self, prefix="", start_after=None) -> Iterator[ObjectInfo]:
        """ListObjectsV2 page by page, each page yielded before the next is asked for."""
        token = None
        while True:
            response = self._call("list_objects_v2", prefix, **self.k.list_params(prefix, start_after, token))
            items, token = self.k.list_page(response)
            yield from items
            if not token:
                return

    def folders(self, prefix):
        token = None
        while True:
            params = {**self.k.list_params(prefix, None, token), "Delimiter": "/"}
            response = self._call("list_objects_v2", prefix, **params)
            for common in response.get("CommonPrefixes", []):
                yield common["Prefix"][len(self.k.prefix) + len(prefix):].rstrip("/")
            token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
            if not token:
                return

    def delete(self, key):
        self._call("delete_object", key, **self.k.key_params(key))

    def presign_get(self, key, expires_s):
        """A presigned GetObject URL, signed locally (no request). SigV4, which R2 requires and S3 prefers (boto3
        would sign V2 by default); both accept up to 7 days."""
        try:
            if getattr(self, "_signer", None) is None:
                from botocore.config import Config  # late: only a presigning bucket needs the SigV4 client

                meta = self.client.meta
                self._signer = boto3.session.Session().client(
                    "s3", endpoint_url=meta.endpoint_url, region_name=meta.region_name,
                    config=meta.config.merge(Config(signature_version="s3v4")))
            return self._signer.generate_presigned_url("get_object", Params=self.k.key_params(key),
                                                       ExpiresIn=int(expires_s))
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, "presign", key, self.k.url) from exc

    def full_key(self, key):
        return self.k.full_key(key)

    def relative_key(self, full_key):
        return self.k.relative_key(full_key)
