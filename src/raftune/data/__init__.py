"""Data stage: documents -> chunks -> RAFT rows."""
