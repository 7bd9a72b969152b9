"""The maintenance knowledge base: causes, actions, parts, skills, safety per condition and asset type.

Loaded from YAML files (examples/knowledge/ for the example plant), stored with versions, edited through the
API (twin/api/routes/advice.py). twin/advice.py turns it into ranked advice for alerts.
"""

from twin.knowledge.base import (
    KnowledgeBody,
    KnowledgeFile,
    KnowledgeItem,
    current,
    delete,
    get_current,
    load_dir,
    load_file,
    put,
    sync_files,
    versions,
)

__all__ = [
    "KnowledgeBody",
    "KnowledgeFile",
    "KnowledgeItem",
    "current",
    "delete",
    "get_current",
    "load_dir",
    "load_file",
    "put",
    "sync_files",
    "versions",
]
