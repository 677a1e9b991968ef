"""Official PITI checkpoints from the Hugging Face Hub.

The authors publish their COCO checkpoints in the model repo ``tfwang/PITI`` (mask and sketch; no depth
model was released). :func:`checkpoint_paths` fetches a task's base model and upsampler through
``huggingface_hub.hf_hub_download`` (which caches them, and reads only the cache when ``HF_HUB_OFFLINE=1``);
:meth:`piti.pipeline.PITIPipeline.from_pretrained` builds the pipeline on them:

    pipe = PITIPipeline.from_pretrained("tfwang/PITI", task="mask")   # about 2.8 GB on the first call
    out = pipe(Image.open("labels.png"), num_samples=4)

Other repos holding the same kind of files name them with ``files={"mask": ("base.pt", "up.pt")}``.
"""

from __future__ import annotations

from pathlib import Path

from piti.errors import ConfigError, MissingWeightsError

HUB_REPO = "tfwang/PITI"
# task -> (base model, upsampler) file names in tfwang/PITI (the Space tfwang/PITI-Synthesis uses the same)
HUB_FILES = {
    "mask": ("base_mask.pt", "upsample_mask.pt"),
    "sketch": ("base.pt", "upsample.pt"),
}


def hub_files(task: str, files: dict | None = None) -> tuple[str, str]:
    """The (base, upsampler) file names of ``task`` in the repo (``files`` overrides :data:`HUB_FILES`)."""
    table = {**HUB_FILES, **(files or {})}
    if task not in table:
        raise ConfigError(
            f"no {task!r} checkpoints are known in the Hub repo; known tasks: {', '.join(table)} "
            "(pass files={task: (base, upsampler)} for a repo that has them)"
        )
    return table[task]


def download(repo_id: str, filename: str, *, revision: str | None = None, cache_dir=None, token=None) -> Path:
    """One file of a Hub model repo, from the cache or the network; MissingWeightsError saying why not."""
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:
        raise ConfigError(
            'fetching checkpoints from the Hub needs huggingface_hub: pip install -e ".[demo]" '
            "(or pass the files' paths with --base/--upsampler)"
        ) from None
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{filename} of the Hugging Face model repo {repo_id}"
    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token))
    except LocalEntryNotFoundError:
        offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise MissingWeightsError(
            f"{where} is not in the Hugging Face cache ({cache}) and {offline}; download it once where the "
            f"network is available (e.g. `hf download {repo_id} {filename}`), or pass the file's path "
            "(--base/--upsampler)"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise MissingWeightsError(f"{where}: the repo or revision does not exist or is private ({e})") from None
    except EntryNotFoundError:
        raise MissingWeightsError(f"{where}: the repo has no such file") from None
    except HfHubHTTPError as e:
        raise MissingWeightsError(f"{where} could not be downloaded: {e}") from None


def checkpoint_paths(
    repo_id: str = HUB_REPO,
    task: str = "mask",
    *,
    files: dict | None = None,
    revision: str | None = None,
    cache_dir=None,
    token=None,
    upsample: bool = True,
) -> tuple[Path, Path | None]:
    """The local paths of ``task``'s base model and upsampler from the Hub repo ``repo_id`` (cached;
    ``upsample=False`` fetches the base model only and gives None for the upsampler)."""
    base_name, up_name = hub_files(task, files)
    fetch = dict(revision=revision, cache_dir=cache_dir, token=token)
    base = download(repo_id, base_name, **fetch)
    return base, download(repo_id, up_name, **fetch) if upsample else None
