"""raftune: RAFT-style data, QLoRA finetuning, merge, GGUF export and evaluation, from a folder of documents."""

__version__ = "0.1.0"


class RaftuneError(Exception):
    """An error the user can fix (bad config, missing file, malformed row). The CLI prints it as one line."""
