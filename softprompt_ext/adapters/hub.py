"""Push a soft-prompt adapter to the Hub with the model card `save_pretrained` wrote.

`PeftModel.push_to_hub` is Transformers' `PushToHubMixin.push_to_hub`: it saves the adapter, then writes
Transformers' template card (or the card already on the Hub) over `README.md`, so `library_name: peft`,
the tags and the soft-prompt section never reach the Hub (the adapter files themselves are right and load
fine). `push_adapter` saves, then uploads the folder exactly as saved, through huggingface_hub's public
`create_repo` + `upload_folder`. `tests/test_hub.py` pins both behaviours against a local Hub server.
"""

from __future__ import annotations

import tempfile
from typing import Any

from huggingface_hub import CommitInfo, HfApi


def push_adapter(
    model,
    repo_id: str,
    *,
    commit_message: str = "Upload soft prompt adapter",
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    **save_kwargs: Any,
) -> CommitInfo:
    """Save `model` (a `PeftModel`) and upload exactly the saved files.

    Returns the commit; pass `commit.oid` as `revision=` to `PeftModel.from_pretrained` to pin this version.
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, **save_kwargs)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision)
