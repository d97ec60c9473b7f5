"""The broker's queue names, apart from the Celery app so `status` reads them without importing Celery."""

INFERENCE_QUEUE, IO_QUEUE = "gpu", "io"  # inference (one worker process per GPU); export
