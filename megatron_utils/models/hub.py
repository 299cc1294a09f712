"""The Hugging Face hub: offline-aware downloads, and the one save format of every network Megatron trains.

Hub files are used when the hub can be reached or they already sit in the local hub cache. Offline
(`HF_HUB_OFFLINE=1`, or the hub unreachable), only the local cache is consulted, so nothing waits on
network retries.

`HubModule` is `huggingface_hub`'s `PyTorchModelHubMixin` with Megatron's rules: a folder holds
`config.json` (the model's config dataclass), `model.safetensors` and `README.md` (its model card);
`save_pretrained` and `push_to_hub` are the library's; `from_pretrained` takes a local folder or a hub repo
id and loads the weights strictly (every tensor present, none unknown) and without pickle.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

import huggingface_hub
import safetensors.torch
import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin
from huggingface_hub.errors import HfHubHTTPError

from ..core.templates import render

CONFIG_NAME = huggingface_hub.constants.CONFIG_NAME  # config.json
WEIGHTS_NAME = huggingface_hub.constants.SAFETENSORS_SINGLE_FILE  # model.safetensors
CARD_FILE = "README.md"
LIBRARY = "megatron-deepfake"
TAGS = ["deepfake-detection", "video-classification"]

Module = TypeVar("Module", bound="HubModule")


class WeightsUnavailableError(FileNotFoundError):
    """Weights that cannot be found locally or fetched; the message says what to do instead."""


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` read now (the hub library reads it only once, at import)."""
    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return flag.upper() in {"1", "ON", "YES", "TRUE"} or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


@functools.cache
def _hub_answers() -> bool:
    url = urlparse(huggingface_hub.constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=3):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether to ask the hub at all; a quick probe avoids the hub client's long retry loop."""
    return not hub_offline() and _hub_answers()


def hub_download(repo_id: str, filename: str | None = None) -> Path:
    """A file of a hub repository (or, without `filename`, its JSON and safetensors files as a
    folder), downloaded or taken from the local hub cache when offline."""
    local_only = not hub_reachable()
    try:
        if filename is not None:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=local_only))
        return Path(huggingface_hub.snapshot_download(
            repo_id, local_files_only=local_only, allow_patterns=["*.json", "*.safetensors"]))
    except (OSError, ValueError, HfHubHTTPError) as error:
        where = "the hub is offline or unreachable" if local_only else "the hub download failed"
        raise WeightsUnavailableError(
            f"cannot load {repo_id!r}: {where} and it is not in the local hub cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}). On a machine with internet, save it with "
            f"save_pretrained (or download the weights file) and pass that local path instead. "
            f"[{type(error).__name__}: {error}]"
        ) from error


def is_hub_id(name: str) -> bool:
    """`owner/name`, which no local path spelled with ./, / or ~ is."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def local_folder(name_or_path: str | os.PathLike) -> Path:
    """A local folder as it is, or a hub repo id (`owner/name`) downloaded or taken from the hub cache."""
    given = str(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists() and is_hub_id(given):
        path = hub_download(given)
    if not path.is_dir():
        raise FileNotFoundError(f"{given}: no such folder or hub repo id")
    return path


def model_card(template: str, **context: Any) -> ModelCard:
    """A `ModelCard` from one of the package's templates, under the library's metadata header."""
    data = ModelCardData(library_name=LIBRARY, tags=TAGS)
    return ModelCard(render(template, card_data=data.to_yaml(), **context))


class HubModule(PyTorchModelHubMixin, library_name=LIBRARY, tags=list(TAGS)):  # the mixin appends to it
    """A network saved as config.json (its `config_class` dataclass, passed to `__init__` as `config`),
    model.safetensors and a model card rendered from `card_template`."""

    config_class: ClassVar[type]
    card_template: ClassVar[str]

    @classmethod
    def from_pretrained(cls: type[Module], name_or_path: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> Module:  # type: ignore[override]
        """The model saved in a local folder or a hub repo (`owner/name`), in eval mode on `map_location`."""
        folder = local_folder(name_or_path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a saved {cls.__name__}: {name} is missing")
        return super().from_pretrained(folder, map_location=str(map_location))

    @classmethod
    def _from_pretrained(cls: type[Module], *, model_id: str, config: dict[str, Any],
                         map_location: str = "cpu", **_: Any) -> Module:
        # `config` is config.json as the mixin read it; `from __future__` annotations keep the mixin from
        # decoding it into the dataclass, so it is built here, strictly.
        known = {field.name for field in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"{model_id}/{CONFIG_NAME}: unknown {cls.config_class.__name__} field(s) "
                             f"{unknown}")
        model = cls.build(cls.config_class(**config))
        weights = Path(model_id) / WEIGHTS_NAME
        safetensors.torch.load_model(model, str(weights), strict=True, device=map_location)
        return model.to(map_location).eval()

    @classmethod
    def build(cls: type[Module], config: Any) -> Module:
        """A freshly initialised model for `config` (weights are loaded into it next)."""
        return cls(config)

    def generate_model_card(self, **context: Any) -> ModelCard:
        return model_card(self.card_template, model=self, **context)

    @staticmethod
    def read_config(folder: str | os.PathLike) -> dict[str, Any] | None:
        """config.json of a saved model folder, or None where there is none."""
        path = Path(folder) / CONFIG_NAME
        return json.loads(path.read_text()) if path.is_file() else None
