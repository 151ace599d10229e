"""The price catalog: what one million tokens of each model costs, with its source and date.

Prices are data, not code: they ship in ``catalog.yaml`` next to this module (read with
``importlib.resources`` so it works from a wheel or a zip), every entry names the provider
page it came from and the date it is known to be valid, and deployments override or add
entries from ``tokenomy.yaml`` through :meth:`PriceCatalog.with_overrides`.

Lookup is deliberately conservative. Clients send ids like ``openai/gpt-4o-2024-08-06`` or
``claude-3-5-haiku-latest``; :meth:`PriceCatalog.get` strips a provider prefix, a date
suffix and ``-latest``, and nothing else. It never guesses from a prefix
(``gpt-4o-mini-search-preview`` is *not* ``gpt-4o-mini``), because a wrong price is worse
than an unknown one: unknown cost is reported as unknown, never as zero.

Usage::

    catalog = PriceCatalog.load_default().with_overrides(settings.prices)
    price = catalog.get("gpt-4o-mini-2024-07-18")   # ModelPrice for gpt-4o-mini
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

__all__ = ["ModelPrice", "PriceCatalog"]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model in USD per 1M tokens, plus the limits routing and budgets need.

    Optional prices are ``None`` where the provider does not charge that item separately;
    :func:`tokenomy.pricing.cost.cost_usd` then falls back to the plain input price.
    """

    model: str
    provider: str
    input: float
    output: float
    cached_input: float | None = None  # prompt-cache read
    cache_write: float | None = None  # 5-minute cache write (Anthropic); None where not charged separately
    cache_write_1h: float | None = None
    batch_input: float | None = None
    batch_output: float | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    kind: str = "chat"  # or "embeddings"
    source: str = ""  # URL of the provider's pricing page
    as_of: str = ""  # YYYY-MM-DD the price is known to be valid
    aliases: tuple[str, ...] = ()


_PRICE_FIELDS = ("input", "output", "cached_input", "cache_write", "cache_write_1h", "batch_input", "batch_output")
_REQUIRED_PRICES = ("input", "output")
_INT_FIELDS = ("context_window", "max_output_tokens")
_STR_FIELDS = ("provider", "source", "as_of")
_KINDS = ("chat", "embeddings")
_EDITABLE = frozenset((*_PRICE_FIELDS, *_INT_FIELDS, *_STR_FIELDS, "kind", "aliases"))

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Snapshot suffixes that never change a model's family: -2024-08-06, -20241022, @20241022.
_DATE_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8})$")
_LATEST_SUFFIX = "-latest"
# Normalized lookups are memoized; client-supplied names are unbounded, the memo is not.
_MEMO_LIMIT = 4096


class PriceCatalog:
    """An immutable set of :class:`ModelPrice` entries with forgiving-but-safe lookup."""

    def __init__(self, prices: list[ModelPrice] | tuple[ModelPrice, ...]) -> None:
        models: dict[str, ModelPrice] = {}
        exact: dict[str, ModelPrice] = {}
        folded: dict[str, ModelPrice] = {}
        for price in prices:
            if price.model in models:
                raise ValueError(f"price catalog: model {price.model!r} is listed twice")
            models[price.model] = price
        for price in models.values():
            for name in (price.model, *price.aliases):
                other = exact.get(name)
                if other is not None and other is not price:
                    raise ValueError(
                        f"price catalog: {name!r} names both {other.model!r} and {price.model!r}"
                    )
                exact[name] = price
                other = folded.get(name.lower())
                if other is not None and other is not price:
                    raise ValueError(
                        f"price catalog: {name!r} differs only in case from a name of {other.model!r}"
                    )
                folded[name.lower()] = price
        self._models = models
        self._exact = exact
        self._folded = folded
        self._memo: dict[str, ModelPrice | None] = {}

    # -- construction -------------------------------------------------------------------

    @classmethod
    def load_default(cls) -> PriceCatalog:
        """The catalog shipped with Tokenomy (parsed once per process, then shared)."""
        return _load_packaged()

    @classmethod
    def from_yaml(cls, text: str, *, origin: str = "catalog") -> PriceCatalog:
        """Parse the ``catalog.yaml`` format (see the comment block at the top of that file)."""
        data = yaml.load(text, Loader=_YAML_LOADER)
        if not isinstance(data, dict) or not isinstance(data.get("providers"), dict):
            raise ValueError(f"{origin}: expected a top-level 'providers' mapping")
        prices: list[ModelPrice] = []
        for provider, section in data["providers"].items():
            where = f"{origin}: providers.{provider}"
            if not isinstance(section, dict) or not isinstance(section.get("models"), dict):
                raise ValueError(f"{where}: expected a mapping with a 'models' mapping")
            defaults = {"provider": str(provider)}
            for key in ("source", "as_of"):
                if key in section:
                    defaults[key] = section[key]
            for model, fields in section["models"].items():
                if not isinstance(fields, dict):
                    raise ValueError(f"{where}.models.{model}: expected a mapping of fields")
                prices.append(_build(str(model), {**defaults, **fields}, f"{where}.models.{model}"))
        return cls(prices)

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> PriceCatalog:
        """A new catalog with ``overrides`` (``{model: {field: value}}``) applied.

        - A key naming an entry or alias changes only the fields given.
        - A key that resolves through normalization (``gpt-4o-2024-08-06``) becomes its own
          entry, starting from the resolved one, so the base model keeps its price.
        - Any other key is a new entry and must give ``input`` and ``output``; its provider
          defaults to the ``provider/`` prefix of the key, else ``custom``.

        Raises ``ValueError`` naming the key and field on bad input.
        """
        if not overrides:
            return self
        merged = dict(self._models)
        for key, fields in overrides.items():
            where = f"prices[{key!r}]"
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"{where}: model name must be a non-empty string")
            if not isinstance(fields, Mapping):
                raise ValueError(f"{where}: expected a mapping of fields, got {type(fields).__name__}")
            fields = dict(fields)
            if fields.get("model", key) != key:
                raise ValueError(f"{where}: 'model' may not rename an entry")
            fields.pop("model", None)
            current = self._exact.get(key)
            if current is not None:
                base = merged[current.model]
                merged[base.model] = _build(base.model, {**_fields_of(base), **fields}, where)
                continue
            resolved = self.get(key)
            if resolved is not None and key.strip().lower() in _names_folded(resolved):
                # Same name in another case: still an edit of that entry, not a new one.
                base = merged[resolved.model]
                merged[base.model] = _build(base.model, {**_fields_of(base), **fields}, where)
                continue
            if resolved is not None:
                inherited = {**_fields_of(resolved), "aliases": ()}
                merged[key] = _build(key, {**inherited, **fields}, where)
                continue
            missing = [name for name in _REQUIRED_PRICES if fields.get(name) is None]
            if missing:
                raise ValueError(
                    f"{where}: unknown model, so a new entry: {' and '.join(missing)} required "
                    "(USD per 1M tokens)"
                )
            provider = key.split("/", 1)[0] if "/" in key else "custom"
            merged[key] = _build(key, {"provider": provider, **fields}, where)
        return PriceCatalog(list(merged.values()))

    # -- lookup -------------------------------------------------------------------------

    def get(self, model: str) -> ModelPrice | None:
        """The price of ``model``: exact name, alias, then normalized; ``None`` if unknown.

        Normalization (case-insensitive) strips ``provider/`` prefixes, a date suffix
        (``-2024-08-06``, ``-20241022``, ``@20241022``) and ``-latest``, in any combination.
        An exact entry always wins, so a snapshot priced differently from its family
        (``gpt-4o-2024-05-13``) keeps its own price.
        """
        price = self._exact.get(model)
        if price is not None or not model:
            return price
        try:
            return self._memo[model]
        except KeyError:
            pass
        price = self._normalized(model)
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[model] = price
        return price

    def _normalized(self, model: str) -> ModelPrice | None:
        name = model.strip().lower()
        while True:
            for candidate in _suffix_variants(name):
                price = self._folded.get(candidate)
                if price is not None:
                    return price
            if "/" not in name:
                return None
            name = name.split("/", 1)[1]

    def search(self, pattern: str | None) -> list[ModelPrice]:
        """Entries whose name, an alias or provider matches ``pattern`` (case-insensitive).

        A pattern with ``*``, ``?`` or ``[`` is a glob (fnmatch) on the name and aliases;
        anything else is a substring of the name, an alias or the provider. ``None`` or an
        empty pattern lists everything, in catalog order.
        """
        if not pattern:
            return list(self._models.values())
        needle = pattern.strip().lower()
        if any(char in needle for char in "*?["):
            return [
                price
                for price in self._models.values()
                if any(fnmatch.fnmatchcase(name.lower(), needle) for name in (price.model, *price.aliases))
            ]
        return [
            price
            for price in self._models.values()
            if needle in price.provider.lower()
            or any(needle in name.lower() for name in (price.model, *price.aliases))
        ]

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.get(model) is not None

    def __repr__(self) -> str:
        return f"PriceCatalog({len(self._models)} models)"


# -- helpers ------------------------------------------------------------------------------

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _load_packaged() -> PriceCatalog:
    text = resources.files("tokenomy.pricing").joinpath("catalog.yaml").read_text(encoding="utf-8")
    return PriceCatalog.from_yaml(text, origin="tokenomy/pricing/catalog.yaml")


def _suffix_variants(name: str) -> Iterator[str]:
    """``name``, then ``name`` without a date suffix and/or ``-latest`` (each at most once)."""
    yield name
    seen = {name}
    pending = [name]
    while pending:
        current = pending.pop()
        stripped = []
        undated = _DATE_SUFFIX.sub("", current)
        if undated != current:
            stripped.append(undated)
        if current.endswith(_LATEST_SUFFIX):
            stripped.append(current[: -len(_LATEST_SUFFIX)])
        for variant in stripped:
            if variant and variant not in seen:
                seen.add(variant)
                pending.append(variant)
                yield variant


def _names_folded(price: ModelPrice) -> set[str]:
    return {name.lower() for name in (price.model, *price.aliases)}


def _fields_of(price: ModelPrice) -> dict[str, Any]:
    fields = dataclasses.asdict(price)
    del fields["model"]
    return fields


def _build(model: str, fields: Mapping[str, Any], where: str) -> ModelPrice:
    """Validate raw fields (from YAML or overrides) and make a :class:`ModelPrice`."""
    unknown = sorted(set(fields) - _EDITABLE)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"known fields: {', '.join(sorted(_EDITABLE))}"
        )
    values: dict[str, Any] = {}
    for name in _PRICE_FIELDS:
        if name in fields:
            values[name] = _price(fields[name], f"{where}.{name}", required=name in _REQUIRED_PRICES)
    for name in _REQUIRED_PRICES:
        if values.get(name) is None:
            raise ValueError(f"{where}: {name!r} is required (USD per 1M tokens)")
    for name in _INT_FIELDS:
        if name in fields:
            values[name] = _positive_int(fields[name], f"{where}.{name}")
    for name in _STR_FIELDS:
        if name in fields:
            value = fields[name]
            if not isinstance(value, str):
                # YAML reads an unquoted 2025-11-01 as a date; accept it for as_of.
                if name == "as_of" and hasattr(value, "isoformat"):
                    value = value.isoformat()
                else:
                    raise ValueError(f"{where}.{name}: expected a string, got {value!r}")
            values[name] = value
    as_of = values.get("as_of", "")
    if as_of and not _DATE.fullmatch(as_of):
        raise ValueError(f"{where}.as_of: expected a date YYYY-MM-DD, got {as_of!r}")
    if "kind" in fields:
        if fields["kind"] not in _KINDS:
            raise ValueError(f"{where}.kind: expected one of {', '.join(_KINDS)}, got {fields['kind']!r}")
        values["kind"] = fields["kind"]
    if "aliases" in fields:
        aliases = fields["aliases"]
        if isinstance(aliases, str) or not isinstance(aliases, (list, tuple)):
            raise ValueError(f"{where}.aliases: expected a list of model names")
        if not all(isinstance(alias, str) and alias for alias in aliases):
            raise ValueError(f"{where}.aliases: every alias must be a non-empty string")
        values["aliases"] = tuple(alias for alias in aliases if alias != model)
    values.setdefault("provider", "custom")
    return ModelPrice(model=model, **values)


def _price(value: Any, where: str, *, required: bool) -> float | None:
    if value is None:
        if required:
            raise ValueError(f"{where}: required (USD per 1M tokens)")
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a number of USD per 1M tokens, got {value!r}")
    try:
        number = float(value)  # numeric strings arrive from environment-variable overrides
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number of USD per 1M tokens, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: must be a finite number ≥ 0, got {value!r}")
    return number


def _positive_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a whole number of tokens, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a whole number of tokens, got {value!r}") from None
    if number <= 0 or (isinstance(value, float) and number != value):
        raise ValueError(f"{where}: expected a whole number of tokens > 0, got {value!r}")
    return number
