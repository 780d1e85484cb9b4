"""The transcription image's entry point: Runpod serverless around the shared attempt runtime."""

from __future__ import annotations

from bucketrun.images.runtime.serverless import handler, main

__all__ = ["handler"]

if __name__ == "__main__":
    main(["transcribe"])
