"""Writing an object to S3 whole or not at all: a multipart upload fed by the Parquet writer,
part by part while scoring goes on, and completed only by ``commit``, so the object appears whole
or not at all and a rerun replaces it. ``abort`` drops it; a run killed before either leaves an
open upload, which the next run of the same output aborts (``ObjectStore.abort_open_uploads``,
called by ``S3Object.prepare``) before it starts its own.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mlpipe.batch.objects import ObjectStore, S3Url

PART_BYTES = 8 << 20  # S3's parts are 5 MiB at least (but the last); 10,000 parts at most
PARTS_IN_FLIGHT = 2  # parts uploading while the writer fills the next: memory ~3 parts


class MultipartUpload:
    """A writable file over one S3 multipart upload: parts go up on a thread while the caller
    writes; ``commit`` completes it (a small object is one PUT), ``abort`` drops it."""

    def __init__(self, store: ObjectStore, url: S3Url) -> None:
        self.store, self.url = store, url
        self.upload_id: str | None = None
        self.buffer = bytearray()
        self.position = 0
        self.parts: list[Future[dict[str, Any]]] = []
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mlpipe-s3-put")
        self.lock = threading.Lock()
        self.closed = False

    # what pyarrow's PythonFile asks of a writable file
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:  # the Parquet writer closes its sink; commit/abort end the upload
        pass

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.buffer += view
        self.position += len(view)
        while len(self.buffer) >= self._part_bytes():
            chunk = bytes(self.buffer[: self._part_bytes()])
            del self.buffer[: len(chunk)]
            self._send(chunk)
        return len(view)

    def _part_bytes(self) -> int:
        return PART_BYTES * (1 + len(self.parts) // 1000)  # 8 MiB, then larger: no part limit

    def _send(self, chunk: bytes) -> None:
        url, client = self.url, self.store.client
        if self.upload_id is None:
            with self.store.errors(url, "write"):
                self.upload_id = client.create_multipart_upload(Bucket=url.bucket, Key=url.key)[
                    "UploadId"
                ]
        number = len(self.parts) + 1

        def put() -> dict[str, Any]:
            with self.store.errors(url, "write"):
                answer = client.upload_part(
                    Bucket=url.bucket,
                    Key=url.key,
                    UploadId=self.upload_id,
                    PartNumber=number,
                    Body=chunk,
                )
            return {"PartNumber": number, "ETag": answer["ETag"]}

        self.parts.append(self.pool.submit(put))
        unfinished = [p for p in self.parts if not p.done()]
        if len(unfinished) > PARTS_IN_FLIGHT:
            unfinished[0].result()
        for part in self.parts:  # an upload that failed stops the writer now, not at commit
            if part.done() and part.exception() is not None:
                part.result()

    def commit(self) -> None:
        """Complete the upload: the object appears, whole, now."""
        url, client = self.url, self.store.client
        try:
            if self.upload_id is None:
                with self.store.errors(url, "write"):
                    client.put_object(Bucket=url.bucket, Key=url.key, Body=bytes(self.buffer))
                return
            if self.buffer:
                self._send(bytes(self.buffer))
                self.buffer.clear()
            parts = [p.result() for p in self.parts]
            with self.store.errors(url, "write"):
                client.complete_multipart_upload(
                    Bucket=url.bucket,
                    Key=url.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            self.abort()
            raise
        finally:
            self.pool.shutdown(wait=True)

    def abort(self) -> None:
        """Drop the upload: nothing appears, no part stays billed."""
        for part in self.parts:
            part.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.upload_id is not None:
            with contextlib.suppress(Exception):  # already failing: keep the first error
                self.store.client.abort_multipart_upload(
                    Bucket=self.url.bucket, Key=self.url.key, UploadId=self.upload_id
                )
            self.upload_id = None
        self.buffer.clear()


class S3Object:
    """A ``files.Destination`` on S3: written through a multipart upload, completed on commit."""

    def __init__(self, store: ObjectStore, url: S3Url) -> None:
        self.store, self.url = store, url
        self.upload: MultipartUpload | None = None

    def __str__(self) -> str:
        return str(self.url)

    def prepare(self) -> None:
        self.store.abort_open_uploads(self.url)

    def open(self) -> MultipartUpload:
        self.upload = MultipartUpload(self.store, self.url)
        return self.upload

    def commit(self) -> None:
        if self.upload is not None:
            self.upload.commit()

    def discard(self) -> None:
        if self.upload is not None:
            self.upload.abort()

    def remove(self) -> None:
        self.store.delete(self.url)
