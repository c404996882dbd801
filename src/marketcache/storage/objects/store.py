"""Objects under one URL prefix, with the two conditional writes the commit protocol needs.

`S3Store` speaks S3 through s3fs's client: `If-None-Match: *` creates only when absent,
`If-Match: <etag>` replaces only what the writer read; the service refuses a failed condition
with 412 (or 409 for a concurrent conditional write), raised here as `Conflict`. Its clock is
the server's (`Date` and `Last-Modified`), so lease expiry does not depend on the machines'
clocks agreeing.

`FsspecStore` serves every other fsspec URL (memory://, gs://, az://…). Stores that offer no
conditional write get the conditions checked before writing — not atomic, which is why the
lease serialises writers and the conditions only guard against a holder whose lease expired.

Credentials come from the standard places (AWS_* variables, `settings.storage_options` with
`${ENV}` for secrets); nothing here puts them in a message.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from marketcache.errors import Conflict, StorageError, UsageError


@dataclass(frozen=True)
class Meta:
    etag: str
    size: int
    modified: float | None  # epoch seconds by the store's clock (None: unknown)
    now: float  # the store's clock when it answered


class ObjectStore:
    """Names are relative to the store's root prefix, "/"-separated."""

    url = ""  # shown in messages (no credentials)
    atomic_conditions = False  # whether the service itself checks If-Match / If-None-Match
    requests = 0  # requests sent (what `info` and the tests count)
    sent_bytes = 0  # object bytes uploaded, and downloaded (what the benchmark reports)
    received_bytes = 0

    def check(self) -> None:
        """UsageError naming the bucket when it does not exist."""

    def exists(self) -> bool:
        """Whether anything is stored under the root."""
        raise NotImplementedError

    def get(self, name: str) -> tuple[bytes, Meta] | None:
        """The object's bytes and what the store says of it (etag, clocks), or None."""
        raise NotImplementedError

    def head(self, name: str) -> Meta | None:
        raise NotImplementedError

    def put(
        self, name: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> str:
        """Write; the new etag. Conflict when a condition does not hold."""
        raise NotImplementedError

    def delete(self, name: str, *, if_match: str | None = None) -> None:
        """Remove (absent is fine); Conflict when `if_match` no longer holds."""
        raise NotImplementedError

    def listing(self, prefix: str = "") -> dict[str, Meta]:
        """Every object under `prefix` (recursively): name → size and etag."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _root(url: str) -> tuple[str, str, str]:
    """(protocol, bucket, prefix) of an fsspec URL."""
    protocol, _, rest = url.partition("://")
    rest = rest.strip("/")
    bucket, _, prefix = rest.partition("/")
    return protocol.lower(), bucket, prefix.strip("/")


def safe_url(url: str) -> str:
    """The URL without any user:secret@ part or secret query value (`storage.urls.redact`)."""
    from marketcache.storage.urls import redact

    protocol, sep, rest = redact(url).partition("://")
    host, slash, path = rest.partition("/")
    return f"{protocol}{sep}{host.rpartition('@')[2]}{slash}{path}"


class S3Store(ObjectStore):
    atomic_conditions = True

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        import s3fs

        self.url = safe_url(url).rstrip("/")
        _, self.bucket, self.prefix = _root(safe_url(url))
        if not self.bucket:
            raise UsageError(f"--cache-dir {safe_url(url)}: name a bucket (s3://BUCKET/prefix)")
        opts = dict(options)
        opts.setdefault("default_block_size", 8 << 20)
        self.fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, method: str, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

        self.requests += 1
        return sync(self.fs.loop, self._async_call, method, kwargs)

    async def _async_call(self, method: str, kwargs: dict[str, Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            # s3fs's client (endpoint, keys, retries) without its error translation
            await self.fs.set_session()
            out = await getattr(self.fs.s3, method)(Bucket=self.bucket, **kwargs)
            if method == "get_object":
                async with out["Body"] as body:
                    out["Data"] = await body.read()
            return out
        except ClientError as exc:
            raise self._error(exc, kwargs.get("Key", "")) from None
        except (OSError, BotoCoreError) as exc:  # refused, DNS, timeouts, no credentials
            raise StorageError(
                f"{self.url}: cannot reach the object store ({exc}); check AWS_ENDPOINT_URL,"
                " the network and the credentials"
            ) from None

    def _error(self, exc: Any, key: str) -> Exception:
        key = key.removeprefix(f"{self.prefix}/") if self.prefix else key  # the URL names it
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code == "NoSuchBucket":
            return UsageError(
                f"--cache-dir {self.url}: bucket '{self.bucket}' does not exist;"
                " create it or fix the URL"
            )
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return FileNotFoundError(errno.ENOENT, key)
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return Conflict(f"{self.url}/{key}: changed by another writer")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            return StorageError(
                f"{self.url}: access denied ({code}); check the AWS_* credentials or"
                " settings.storage_options"
            )
        return StorageError(f"{self.url}/{key}: {code or status} from the object store")

    @staticmethod
    def _meta(out: dict[str, Any], size: int) -> Meta:
        headers = out.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        date = headers.get("date")
        now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        modified = out.get("LastModified")
        return Meta(str(out.get("ETag", "")), size, modified.timestamp() if modified else None, now)

    def check(self) -> None:
        try:
            self._call("head_bucket")
        except FileNotFoundError:
            raise UsageError(
                f"--cache-dir {self.url}: bucket '{self.bucket}' does not exist;"
                " create it or fix the URL"
            ) from None

    def exists(self) -> bool:
        listed = self._call("list_objects_v2", Prefix=self._key(""), MaxKeys=1)
        return bool(listed.get("KeyCount", 0))

    def get(self, name: str) -> tuple[bytes, Meta] | None:
        try:
            out = self._call("get_object", Key=self._key(name))
        except FileNotFoundError:
            return None
        data = bytes(out["Data"])
        self.received_bytes += len(data)
        return data, self._meta(out, len(data))

    def head(self, name: str) -> Meta | None:
        try:
            out = self._call("head_object", Key=self._key(name))
        except FileNotFoundError:
            return None
        return self._meta(out, int(out.get("ContentLength", 0)))

    def put(
        self, name: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> str:
        cond: dict[str, str] = {"IfNoneMatch": "*"} if if_absent else {}
        if if_match is not None:
            cond["IfMatch"] = if_match
        self.sent_bytes += len(data)
        try:
            out = self._call("put_object", Key=self._key(name), Body=data, **cond)
        except FileNotFoundError:  # If-Match on an object that is gone
            raise Conflict(f"{self.url}/{name}: removed by another writer") from None
        return str(out["ETag"])

    def delete(self, name: str, *, if_match: str | None = None) -> None:
        cond = {"IfMatch": if_match} if if_match is not None else {}
        with contextlib.suppress(FileNotFoundError):
            self._call("delete_object", Key=self._key(name), **cond)

    def listing(self, prefix: str = "") -> dict[str, Meta]:
        found: dict[str, Meta] = {}
        base = self._key("")
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            out = self._call("list_objects_v2", Prefix=self._key(prefix), **extra)
            now = self._meta(out, 0).now
            for item in out.get("Contents", []):
                name = str(item["Key"])[len(base) :]
                modified = item.get("LastModified")
                found[name] = Meta(
                    str(item.get("ETag", "")),
                    int(item.get("Size", 0)),
                    modified.timestamp() if modified else None,
                    now,
                )
            if not out.get("IsTruncated"):
                return found
            token = out.get("NextContinuationToken")


class FsspecStore(ObjectStore):
    """Any other fsspec file system. Etags are content hashes; conditions are checked, then
    written (not atomic)."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        import fsspec

        self.url = safe_url(url).rstrip("/")
        protocol, bucket, prefix = _root(self.url)
        self.local = protocol in ("local", "file")
        if self.local:  # a folder: objects in folders made on demand, written by rename
            options = {"auto_mkdir": True, **options}
        try:
            self.fs = fsspec.filesystem(protocol, **options)
        except (ImportError, ValueError) as exc:
            raise UsageError(
                f"--cache-dir {self.url}: no fsspec driver for {protocol}:// ({exc})"
            ) from None
        self.base = "/".join(p for p in (bucket, prefix) if p)
        if protocol in ("memory", "local", "file"):  # absolute paths, as `find` answers them
            self.base = "/" + self.base

    def _path(self, name: str) -> str:
        return f"{self.base}/{name}" if name else self.base

    def exists(self) -> bool:
        self.requests += 1
        return bool(self.fs.exists(self._path("")))

    def get(self, name: str) -> tuple[bytes, Meta] | None:
        self.requests += 1
        try:
            data = bytes(self.fs.cat_file(self._path(name)))
        except FileNotFoundError:
            return None
        self.received_bytes += len(data)
        return data, Meta(_etag(data), len(data), None, time.time())

    def head(self, name: str) -> Meta | None:
        found = self.get(name)
        return None if found is None else found[1]

    def put(
        self, name: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> str:
        if if_absent or if_match is not None:
            current = self.get(name)
            if if_absent and current is not None:
                raise Conflict(f"{self.url}/{name}: created by another writer")
            if if_match is not None and (current is None or current[1].etag != if_match):
                raise Conflict(f"{self.url}/{name}: changed by another writer")
        self.requests += 1
        self.sent_bytes += len(data)
        try:
            if self.local:  # a reader never sees half an object
                temp = f"{self._path(name)}.tmp-{secrets.token_hex(4)}"
                self.fs.pipe_file(temp, data)
                self.fs.mv(temp, self._path(name))
            else:
                self.fs.pipe_file(self._path(name), data)
        except OSError as exc:
            raise StorageError(f"{self.url}/{name}: cannot write ({exc})") from None
        return _etag(data)

    def delete(self, name: str, *, if_match: str | None = None) -> None:
        if if_match is not None:
            current = self.get(name)
            if current is not None and current[1].etag != if_match:
                raise Conflict(f"{self.url}/{name}: changed by another writer")
        self.requests += 1
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name))

    def listing(self, prefix: str = "") -> dict[str, Meta]:
        self.requests += 1
        root = self._path("").rstrip("/") + "/"
        try:
            found = self.fs.find(self._path(prefix).rstrip("/") or "/", detail=True)
        except FileNotFoundError:
            return {}
        out: dict[str, Meta] = {}
        now = time.time()
        for path, info in found.items():
            name = str(path)[len(root) :] if str(path).startswith(root) else str(path)
            out[name] = Meta("", int(info.get("size") or 0), None, now)
        return {k: v for k, v in out.items() if k.startswith(prefix)}


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def open_store(url: str, options: dict[str, Any]) -> ObjectStore:
    protocol = url.partition("://")[0].lower()
    if protocol in ("s3", "s3a"):
        return S3Store(url, options)
    return FsspecStore(url, options)
