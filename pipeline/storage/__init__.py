"""Storage for everything a run keeps, on a local folder or any pyarrow URI (s3://, gs://, file://).

Every read and write of a run's files goes through this package: fine-tuned weights, task
vectors, the MagMax actor's state, results Parquet, configs, summaries, sweep records and the
rendered report. Callers use the names below (``from pipeline import storage; storage.join(...)``);
the modules hold:

- ``paths``: local paths and URIs alike (``join``, ``name``, ``parent``, ``filesystem``; a URI's
  ``?query`` carries pyarrow's filesystem options) and ``shown``, a path with credentials redacted.
- ``files``: whole files, each appearing whole or not at all (a temp file and ``os.replace``
  locally, one upload to an object store); listing, deleting, uploading a folder; a local file lock.
- ``integrity``: ``DamagedFileError``, ``.sha256`` sidecars of Parquet parts, and moving a
  damaged file aside (``<name>.damaged-<UTC time>``, never deleted) so the run computes it again.
- ``tensors``: safetensors files carrying the sha256 of their content in their own metadata,
  checked by every read; memory-mapped local reads.
- ``checkpoints``: ``CheckpointStore``, the content-addressed folder of one fine-tuning unit
  (finished tasks and the mid-task ``TrainState``).

Importing this package does not import torch (the results and report layers need none).
"""

from pipeline.storage.paths import filesystem, is_local, is_uri, join, name, parent, shown, split_query
from pipeline.storage.files import (atomic_output, delete, exists, list_files, locked, mtime_ns, read_bytes,
                                    read_text, upload_dir, write_bytes, write_text)
from pipeline.storage.integrity import (DIGEST_KEY, SIDECAR_SUFFIX, CorruptCheckpointError, DamagedFileError,
                                        discard, file_digest, move_aside, read_checked, say, sidecar,
                                        write_sidecar, write_with_sidecar)
from pipeline.storage.tensors import (MappedTensors, check_tensors, check_tensors_file, open_mapped, open_tensors,
                                      read_metadata, read_tensors, tensors_digest, write_tensors)
from pipeline.storage.checkpoints import CheckpointStore, TrainState

__all__ = [
    "filesystem", "is_local", "is_uri", "join", "name", "parent", "shown", "split_query",
    "atomic_output", "delete", "exists", "list_files", "locked", "mtime_ns", "read_bytes", "read_text", "upload_dir",
    "write_bytes", "write_text",
    "DIGEST_KEY", "SIDECAR_SUFFIX", "CorruptCheckpointError", "DamagedFileError", "discard", "file_digest",
    "move_aside", "read_checked", "say", "sidecar", "write_sidecar", "write_with_sidecar",
    "MappedTensors", "check_tensors", "check_tensors_file", "open_mapped", "open_tensors", "read_metadata",
    "read_tensors", "tensors_digest", "write_tensors",
    "CheckpointStore", "TrainState",
]
