"""The `log` provider: writes each message to the structured log (the default; dry runs)."""

from __future__ import annotations

from daemon.infra.logs import get_logger
from daemon.providers.base import Message, SendResult
from daemon.providers.settings import LogProviderSettings

log = get_logger(__name__)


class LogProvider:
    """Accepts every message and logs it as `message.logged` (at debug: content included)."""

    writes_unsubscribe_url = False  # the engine signs it only if a template reads it

    def __init__(self, name: str, settings: LogProviderSettings) -> None:
        self.name = name
        self.settings = settings

    async def start(self) -> None:
        return None

    async def send(self, message: Message) -> SendResult:
        log.info(
            "message.logged",
            provider=self.name,
            campaign_id=message.campaign_id,
            run_id=message.run_id,
            profile_id=message.profile_id,
            channel=message.channel.value,
            idempotency_key=message.idempotency_key,
        )
        return SendResult(provider_message_id=message.idempotency_key)

    async def probe(self) -> None:
        return None

    async def close(self) -> None:
        return None
