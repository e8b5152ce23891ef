"""The assistant: answers from the documents with a run's GGUF (`raftune serve`, `raftune chat`)."""
