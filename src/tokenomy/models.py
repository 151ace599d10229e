"""The model registry: public model names and aliases → priced deployments.

Built once at start-up from the config, the built-in simulated models and, when
``tokenomy[local]`` is installed, the local model. Each deployment carries the
price it is charged at (catalog entry plus config overrides), so pricing a call
is a dictionary-free multiplication on the hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from tokenomy.config import DeploymentSettings, ModelSettings, Settings, resolve_secret
from tokenomy.errors import ModelNotFound
from tokenomy.pricing.catalog import ModelPrice, PriceCatalog
from tokenomy.providers.base import Deployment

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment and the price it is charged at (``None``: unknown)."""

    deployment: Deployment
    price: ModelPrice | None


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    kind: str
    targets: tuple[Target, ...]
    aliases: tuple[str, ...] = ()
    owned_by: str = "tokenomy"

    @property
    def primary(self) -> Target:
        return self.targets[0]


#: Models available with no config at all: simulated, priced as the real models they stand in for.
BUILTIN_MODELS: tuple[ModelSettings, ...] = (
    ModelSettings(
        name="sim-mini",
        deployments=[DeploymentSettings(provider="simulated", model="sim-mini", price_model="gpt-4o-mini")],
    ),
    ModelSettings(
        name="sim-flagship",
        deployments=[DeploymentSettings(provider="simulated", model="sim-flagship", price_model="gpt-4o")],
    ),
    ModelSettings(
        name="sim-haiku",
        deployments=[DeploymentSettings(provider="simulated", model="sim-haiku", price_model="claude-haiku-4-5")],
    ),
    ModelSettings(
        name="sim-embed",
        kind="embeddings",
        deployments=[
            DeploymentSettings(provider="simulated", model="sim-embed", price_model="text-embedding-3-small")
        ],
    ),
)

LOCAL_MODEL = ModelSettings(
    name="local-smollm2",
    deployments=[DeploymentSettings(provider="local", model="smollm2-135m-instruct", price_model="local-smollm2")],
)


class ModelRegistry:
    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = entries
        self._by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            for name in (entry.name, *entry.aliases):
                self._by_name[name] = entry

    def resolve(self, name: str, kind: str = "chat") -> ModelEntry:
        entry = self._by_name.get(name)
        if entry is None:
            raise ModelNotFound(
                f"The model {name!r} does not exist or you do not have access to it.", param="model"
            )
        if entry.kind != kind:
            raise ModelNotFound(f"The model {name!r} is a {entry.kind} model, not a {kind} model.", param="model")
        return entry

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @classmethod
    def from_settings(
        cls, settings: Settings, catalog: PriceCatalog, *, local_available: bool = False
    ) -> ModelRegistry:
        models: list[ModelSettings] = list(settings.models)
        taken = {name for model in models for name in (model.name, *model.aliases)}
        extra: list[ModelSettings] = []
        if settings.builtin_models:
            extra.extend(BUILTIN_MODELS)
        if local_available and settings.local.enabled:
            extra.append(LOCAL_MODEL)
        # configured models win over built-ins of the same name
        models.extend(model for model in extra if model.name not in taken)
        return cls([_entry(model, catalog) for model in models])


def _entry(model: ModelSettings, catalog: PriceCatalog) -> ModelEntry:
    targets = []
    for spec in model.deployments:
        deployment = Deployment(
            name=model.name,
            provider=spec.provider,
            upstream_model=spec.model or model.name,
            base_url=spec.base_url,
            api_key=resolve_secret(spec.api_key_env),
            price_model=spec.price_model,
            prices=dict(spec.prices),
            connect_timeout_s=spec.connect_timeout_s,
            read_timeout_s=spec.read_timeout_s,
            options=dict(spec.options),
        )
        if spec.api_key_env and deployment.api_key is None:
            log.warning("model %s: environment variable %s is not set", model.name, spec.api_key_env)
        targets.append(Target(deployment, _price(deployment, catalog)))
    owner = targets[0].deployment.provider
    return ModelEntry(model.name, model.kind, tuple(targets), tuple(model.aliases), owner)


def _price(deployment: Deployment, catalog: PriceCatalog) -> ModelPrice | None:
    key = deployment.pricing_key
    if deployment.prices:
        catalog = catalog.with_overrides({key: {"provider": deployment.provider, **deployment.prices}})
    price = catalog.get(key)
    if price is None:
        log.warning("model %s: no price for %r in the catalog; its cost will be reported as unknown", deployment.name, key)
    return price
