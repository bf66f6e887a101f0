"""Uploads to the Hugging Face Hub with ``huggingface_hub``'s public API: a repo created if needed, a branch created if
needed, and a directory uploaded in one commit (what ``StreamAligner.push_to_hub`` and
``StreamAlignerConfig.save_pretrained(push_to_hub=True)`` do)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["create_repo", "upload_directory"]


def create_repo(repo_id: str, *, private: bool | None = None, token: str | bool | None = None) -> str:
    """Create ``repo_id`` (a model repo) unless it exists; returns its full id (``owner/name``)."""
    from huggingface_hub import HfApi

    return HfApi().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id


def upload_directory(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str,
    commit_description: str | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Upload every file of ``directory`` to ``repo_id`` in one commit (``HfApi.create_commit``), on branch
    ``revision`` (created from the default branch if needed) or as a pull request; returns the ``CommitInfo``."""
    from pathlib import Path

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
    root = Path(directory)
    operations = [CommitOperationAdd(path_in_repo=path.relative_to(root).as_posix(), path_or_fileobj=str(path))
                  for path in sorted(root.rglob("*")) if path.is_file()]  # fmt: skip
    return api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message,
        commit_description=commit_description,
        token=token,
        revision=revision,
        create_pr=create_pr,
    )
