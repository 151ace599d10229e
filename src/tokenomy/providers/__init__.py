"""Providers: one module per upstream wire format, all behind ``providers.base.Provider``.

To add one, subclass ``Provider`` in a new module and add its class here under
the name config files use (``provider: NAME``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import import_module

from tokenomy.config import ConfigError, Settings
from tokenomy.providers.base import Provider

#: config name → "module:Class" (imported only when a configured model uses it)
PROVIDER_CLASSES: dict[str, str] = {
    "openai": "tokenomy.providers.openai:OpenAICompatibleProvider",
    "anthropic": "tokenomy.providers.anthropic:AnthropicProvider",
    "simulated": "tokenomy.providers.simulated:SimulatedProvider",
    "local": "tokenomy.providers.local:LocalModelProvider",
}


def provider_factory(name: str) -> Callable[..., Provider]:
    try:
        module_name, _, class_name = PROVIDER_CLASSES[name].partition(":")
    except KeyError:
        known = ", ".join(sorted(PROVIDER_CLASSES))
        raise ConfigError(f"unknown provider {name!r} (known: {known})") from None
    return getattr(import_module(module_name), class_name)


def available_providers(names: Iterable[str], settings: Settings) -> dict[str, Provider]:
    """One instance per provider type that some configured model uses."""
    providers: dict[str, Provider] = {}
    for name in sorted(set(names)):
        factory = provider_factory(name)
        providers[name] = factory(settings.local) if name == "local" else factory()
    return providers
