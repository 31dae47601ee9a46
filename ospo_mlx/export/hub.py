"""Upload an export to the Hugging Face hub (optional `hub` extra), or show what would go."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ospo_mlx.errors import OspoError
from ospo_mlx.export.paths import list_files

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


@dataclass
class UploadPlan:
    """What `push_to_hub` uploads: every file of the export directory."""

    repo: str = field(metadata={"help": "Hub repository id, namespace/name."})
    folder: Path = field(metadata={"help": "The local export directory."})
    files: list[tuple[str, int]] = field(default_factory=list, metadata={"help": "(path, bytes)."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def check_repo_id(repo: str) -> str:
    if not _REPO_ID.match(repo) or ".." in repo or repo.endswith((".git", "-", ".")):
        raise OspoError(
            f"--push-to-hub {repo!r} is not a hub repo id; use NAMESPACE/NAME (e.g. alice/ospo-esci)"
        )
    return repo


def plan_upload(folder: Path, repo: str, private: bool = False) -> UploadPlan:
    """The upload plan of `folder` (no network, no huggingface_hub needed)."""
    return UploadPlan(
        repo=check_repo_id(repo),
        folder=Path(folder),
        files=list_files(Path(folder)),
        private=private,
    )


def push_to_hub(plan: UploadPlan) -> str:
    """Create the repo (if needed) and upload the folder; returns the repo URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise OspoError("--push-to-hub needs huggingface_hub: pip install 'ospo[hub]'") from exc
    api = HfApi()
    try:
        url = api.create_repo(
            repo_id=plan.repo, private=plan.private, exist_ok=True, repo_type="model"
        )
        api.upload_folder(folder_path=str(plan.folder), repo_id=plan.repo, repo_type="model")
    except Exception as exc:  # network/auth errors from the hub client: one line for the user
        raise OspoError(
            f"upload to {plan.repo} failed ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "check `huggingface-cli login` and your network"
        ) from exc
    return str(url)
