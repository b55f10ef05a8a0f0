"""Writing a file that readers may be looking at (the newest report, the newest verdict).

Through tf.io.gfile, so the pipeline root may be gs://. The content goes to a hidden
temporary file that is then renamed over the target: a local reader never sees a half
written page, and no filesystem has to truncate in place (TF's ram:// does not: it
appends to an existing file opened for writing).
"""

import os
import uuid

import tensorflow as tf


def replace_file(path: str, content: str | bytes) -> None:
    """Write content to path, replacing what was there in one rename."""
    folder, name = os.path.split(path)
    tf.io.gfile.makedirs(folder)
    staging = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    with tf.io.gfile.GFile(staging, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    tf.io.gfile.rename(staging, path, overwrite=True)
