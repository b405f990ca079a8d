"""One file of a Hugging Face hub repository (or of a local folder given in its place).

``huggingface_hub`` owns everything about the download: its cache (``HF_HUB_CACHE``, or
``cache_dir``), offline mode (``HF_HUB_OFFLINE=1``), revisions and tokens (``HF_TOKEN`` or
``hf auth login``). This module only turns its failures into one-line errors that name the
repository and say how to provide the files. It imports nothing from clipa, so the tokenizer
(low in the dependency order) and ``clipa.hub`` (high) can both use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

DEFAULT_BERT = "bert-base-uncased"  # the BERT tokenizer OpenCLIP's CLIPA configs name (a hub repository)
# "org/name" or "name" (letters, digits, "-", "_", "."), what the hub accepts as a repository id
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HubError(FileNotFoundError):
    """A repository, revision or file that cannot be had; the message is one line."""


def split_revision(repo: str, revision: str | None = None) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; an explicit ``revision`` must agree."""
    if "@" in repo and not Path(repo).exists():
        repo, pinned = repo.rsplit("@", 1)
        if revision is not None and revision != pinned:
            raise ValueError(f"{repo}: revision {pinned!r} in the name and revision={revision!r} disagree")
        revision = pinned
    return repo, revision


def is_repo_id(name: str) -> bool:
    """Whether ``name`` could be a hub repository id (and is not an existing path)."""
    return bool(_REPO_ID.match(name)) and not Path(name).exists()


def fetch(repo: str, filenames: Sequence[str], *, what: str, revision: str | None = None,
          cache_dir: str | Path | None = None) -> Path:
    """The first of ``filenames`` that ``repo`` (a hub id, ``id@rev``, or a local folder) holds."""
    folder = Path(repo).expanduser()
    if folder.is_dir():
        for name in filenames:
            if (folder / name).is_file():
                return folder / name
        raise HubError(f"folder {folder} holds none of {', '.join(filenames)} ({what})")
    repo, revision = split_revision(repo, revision)
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    at = f"{repo}@{revision}" if revision else repo
    cold = False
    for name in filenames:
        try:
            return Path(hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir))
        except LocalEntryNotFoundError:  # not cached, and offline or no connection (before the next clause)
            cold = True
        except EntryNotFoundError:  # the repository has no such file: try the next name
            pass
        except HFValidationError:
            raise HubError(f"{repo!r} ({what}) is neither a local folder nor a hub repository id (ORG/NAME)") from None
        except RepositoryNotFoundError:  # gated repositories included
            raise HubError(f"hub repository {repo} ({what}) not found or not accessible: check the name, or log in "
                           "(`hf auth login` or HF_TOKEN) for a private or gated one") from None
        except RevisionNotFoundError:
            raise HubError(f"hub repository {repo} ({what}) has no revision {revision!r}") from None
    if cold:
        why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "no connection"
        raise HubError(f"hub repository {at} ({what}) is not in the local Hugging Face cache and cannot be "
                       f"downloaded ({why}): fetch it where there is a network (`hf download {repo}`) into the "
                       f"cache (HF_HUB_CACHE), or give a local folder holding {' or '.join(filenames)} instead")
    raise HubError(f"hub repository {at} ({what}) holds none of {', '.join(filenames)}")
