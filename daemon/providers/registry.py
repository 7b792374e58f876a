"""The configured providers: built from the config, started, looked up by channel, reloaded.

`ProviderRegistry.for_channel(channel)` returns a handle that stays valid
across reloads: each send goes to the provider serving the channel at that
moment. A reload (SIGHUP) builds and starts the providers whose settings
changed, swaps them in, and closes the replaced instances only once the sends
they have in flight have finished: no send is dropped. An instance whose
settings did not change is kept (its connections too).

The registry is also a daemon stage (`name`, `start`, `stop`, `reload`), and
`probe()` / `check()` serve `campaignd check-config [--probe]`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING

from daemon.errors import ProviderError
from daemon.infra.clock import Clock, SystemClock
from daemon.infra.config import Config
from daemon.infra.logs import get_logger
from daemon.models import Channel
from daemon.providers.base import Message, Provider, SendResult
from daemon.providers.fcm import FcmProvider, ServiceAccountError, load_service_account
from daemon.providers.log import LogProvider
from daemon.providers.settings import (
    FcmProviderSettings,
    LogProviderSettings,
    ProviderSettings,
    SmtpProviderSettings,
    TwilioProviderSettings,
    WebhookProviderSettings,
)
from daemon.providers.smtp import SmtpProvider
from daemon.providers.twilio import TwilioProvider
from daemon.providers.webhook import WebhookProvider

if TYPE_CHECKING:
    from daemon.api.context import AppContext

log = get_logger(__name__)

SERVICE_NAME = "providers"  # the registry's key in AppContext.services


def build_provider(name: str, settings: ProviderSettings, clock: Clock,
                   public_url: str | None = None) -> Provider:
    """The provider instance for one `[providers.NAME]` section (not started). With
    `server.public_url`, Twilio messages ask for status callbacks there (receipts)."""
    provider: Provider
    match settings:
        case LogProviderSettings():
            provider = LogProvider(name, settings)
        case WebhookProviderSettings():
            provider = WebhookProvider(name, settings, clock=clock)
        case SmtpProviderSettings():
            provider = SmtpProvider(name, settings, clock=clock)
        case TwilioProviderSettings():
            provider = TwilioProvider(name, settings, clock=clock, public_url=public_url)
        case FcmProviderSettings():
            provider = FcmProvider(name, settings, clock=clock)
    return provider


class _Instance:
    """A started provider and the sends it has in flight."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def send(self, message: Message) -> SendResult:
        self.in_flight += 1
        self._idle.clear()
        try:
            return await self.provider.send(message)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def drained(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        """Close once every send in flight has finished."""
        await self.drained()
        try:
            await self.provider.close()
        except Exception:  # closing must not stop the others from closing
            log.exception("provider.close_failed", provider=self.provider.name)


class ProviderHandle:
    """What `for_channel` returns: sends to whichever provider serves the channel now.

    `name`, `settings` and `writes_unsubscribe_url` follow reloads. The registry owns the
    lifecycle: `start` and `close` here do nothing.
    """

    def __init__(self, registry: ProviderRegistry, channel: Channel) -> None:
        self._registry = registry
        self.channel = channel
        instance = registry._instance_for(channel)
        self.name = instance.provider.name
        self.settings: ProviderSettings = instance.provider.settings
        self.writes_unsubscribe_url = instance.provider.writes_unsubscribe_url
        # The instance last found, and the registry's instances it was found in: a start,
        # reload or close replaces that mapping (never changes it in place), and with it the
        # channel's provider, so it is looked up again only then, not per message.
        self._instance = instance
        self._found_in = registry._instances

    def __repr__(self) -> str:
        return f"ProviderHandle(channel={self.channel.value!r}, provider={self.name!r})"

    def _current(self) -> _Instance:
        registry = self._registry
        if registry._instances is not self._found_in:
            self._instance = registry._instance_for(self.channel)  # raises when none
            self._found_in = registry._instances
        return self._instance

    async def start(self) -> None:
        return None

    async def send(self, message: Message) -> SendResult:
        return await self._current().send(message)

    async def probe(self) -> None:
        await self._current().provider.probe()

    async def close(self) -> None:
        return None


class ProviderRegistry:
    """One started provider per configured name (the implicit `log` included)."""

    name = "providers"

    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self._config = config
        self._clock = clock or SystemClock()
        self._instances: dict[str, _Instance] = {}
        self._handles: dict[Channel, ProviderHandle] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def config(self) -> Config:
        return self._config

    def providers(self) -> Mapping[str, Provider]:
        """The current provider instances by name."""
        return {name: instance.provider for name, instance in self._instances.items()}

    def for_channel(self, channel: Channel) -> Provider:
        """The provider serving `channel` (per `[channels]`), as a reload-proof handle."""
        handle = self._handles.get(channel)
        if handle is None:
            handle = self._handles[channel] = ProviderHandle(self, channel)
        return handle

    def _instance_for(self, channel: Channel) -> _Instance:
        name = self._config.channels.provider_for(channel)
        try:
            return self._instances[name]
        except KeyError:
            raise RuntimeError(f"no started provider {name!r} for {channel.value}") from None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Build and start every configured provider; on a failure, close those started."""
        async with self._lock:
            self._instances = await self._start_all(self._config.provider_settings(), {},
                                                    self._config.server.public_url)
            self._refresh_handles()
        log.info("providers.started", providers=sorted(self._instances))

    async def _start_all(
        self, wanted: Mapping[str, ProviderSettings], keep: Mapping[str, _Instance],
        public_url: str | None = None,
    ) -> dict[str, _Instance]:
        """Instances for `wanted`: those in `keep` as they are, the others built and started."""
        started: dict[str, _Instance] = {}
        try:
            for name, settings in wanted.items():
                if name in keep:
                    started[name] = keep[name]
                    continue
                provider = build_provider(name, settings, self._clock, public_url)
                await provider.start()
                started[name] = _Instance(provider)
        except BaseException:
            fresh = [instance for name, instance in started.items() if name not in keep]
            await asyncio.gather(*(instance.close() for instance in fresh))
            raise
        return started

    def _refresh_handles(self) -> None:
        for channel, handle in self._handles.items():
            instance = self._instance_for(channel)
            handle.name = instance.provider.name
            handle.settings = instance.provider.settings
            handle.writes_unsubscribe_url = instance.provider.writes_unsubscribe_url

    async def apply(self, config: Config) -> None:
        """Switch to `config`'s providers; raises (keeping the current ones) if one fails."""
        async with self._lock:
            wanted = config.provider_settings()
            unchanged = {
                name: instance
                for name, instance in self._instances.items()
                if wanted.get(name) == instance.provider.settings
            }
            instances = await self._start_all(wanted, unchanged, config.server.public_url)
            replaced = [
                instance
                for name, instance in self._instances.items()
                if instances.get(name) is not instance
            ]
            self._instances = instances
            self._config = config
            self._refresh_handles()
        log.info(
            "providers.reloaded",
            providers=sorted(instances),
            replaced=sorted(instance.provider.name for instance in replaced),
        )
        # Sends already in flight on a replaced instance finish on it; then it closes.
        await asyncio.gather(*(instance.close() for instance in replaced))

    async def reload(self, config: Config) -> None:
        """SIGHUP: apply `config`; on a failure, log it and keep the current providers."""
        try:
            await self.apply(config)
        except (ProviderError, OSError, ssl.SSLError) as exc:
            log.error("providers.reload_failed", error=str(exc))

    async def stop(self, grace: float, force: asyncio.Event) -> None:
        """Wait up to `grace` (or until `force`) for sends in flight, then close everything."""
        async with self._lock:
            instances = list(self._instances.values())

        async def drain() -> None:
            await asyncio.gather(*(instance.drained() for instance in instances))

        async def forced() -> None:
            await force.wait()

        waiters = {asyncio.create_task(drain()), asyncio.create_task(forced())}
        try:
            await asyncio.wait(waiters, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        await self._close_all(instances)

    async def close(self) -> None:
        """Close every provider once its sends in flight have finished."""
        async with self._lock:
            instances = list(self._instances.values())
        await asyncio.gather(*(instance.close() for instance in instances))
        self._instances = {}

    async def _close_all(self, instances: list[_Instance]) -> None:
        for instance in instances:
            try:
                await instance.provider.close()
            except Exception:
                log.exception("provider.close_failed", provider=instance.provider.name)
        self._instances = {}


def stage(ctx: AppContext) -> ProviderRegistry:
    """The factory for `daemon.stages`: the registry, also published in ctx.services."""
    registry = ProviderRegistry(ctx.config, clock=ctx.clock)
    ctx.services[SERVICE_NAME] = registry
    return registry


async def probe(config: Config) -> list[tuple[str, str | None]]:
    """(name, error or None) per configured provider, checked without sending anything.

    smtp: connect, EHLO, STARTTLS and AUTH as configured; twilio: GET the
    account; fcm: an OAuth2 token grant; webhook and log: nothing (a request
    to a webhook would be a message).
    """
    clock = SystemClock()

    async def one(name: str, settings: ProviderSettings) -> tuple[str, str | None]:
        provider = build_provider(name, settings, clock)
        try:
            async with asyncio.timeout(settings.timeout * 3 + 5):
                await provider.start()
                await provider.probe()
        except ProviderError as exc:
            return name, exc.reason
        except TimeoutError:
            return name, "timeout"
        except (OSError, ssl.SSLError) as exc:
            return name, f"{type(exc).__name__}: {exc}"
        finally:
            await provider.close()
        return name, None

    settings = config.provider_settings()
    return list(await asyncio.gather(*(one(name, s) for name, s in settings.items())))


def check(config: Config) -> list[str]:
    """Static problems of the provider settings (files that must be readable and valid)."""
    problems: list[str] = []
    for name, settings in config.provider_settings().items():
        if isinstance(settings, FcmProviderSettings):
            try:
                load_service_account(settings.service_account_file)
            except ServiceAccountError as exc:
                problems.append(f"providers.{name}.service_account_file: {exc}")
        elif isinstance(settings, SmtpProviderSettings) and settings.tls_ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(settings.tls_ca_file))
            except (OSError, ssl.SSLError) as exc:
                problems.append(
                    f"providers.{name}.tls_ca_file: cannot load {settings.tls_ca_file}: {exc}"
                )
    return problems
