"""The one I/O layer: inputs and their ids, remote files with retries, the video cache, redaction."""
