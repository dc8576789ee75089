"""What the delivery job needs from the settings, secrets unwrapped only at the point of use."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import SecretStr

from billing.settings import Settings


@dataclass(frozen=True)
class NotifyConfig:
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: SecretStr = field(default_factory=lambda: SecretStr(""), repr=False)
    webhook_timeout_seconds: float = 10.0
    max_attempts: int = 12
    backoff_seconds: int = 30
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_user: str | None = None
    smtp_password: SecretStr = field(default_factory=lambda: SecretStr(""), repr=False)
    email_from: str | None = None
    email_language: str = "es"

    @property
    def email_enabled(self) -> bool:
        return self.smtp_host is not None and self.email_from is not None

    def targets(self) -> list[tuple[str, str]]:
        """(channel, target) of every receiver a new event is delivered to."""
        found = [("webhook", url) for url in self.webhook_urls]
        if self.email_enabled:
            found.append(("email", "customer"))
        return found

    @classmethod
    def from_settings(cls, cfg: Settings) -> NotifyConfig:
        return cls(
            webhook_urls=tuple(cfg.webhook_urls),
            webhook_secret=cfg.webhook_secret,
            webhook_timeout_seconds=cfg.webhook_timeout_seconds,
            max_attempts=cfg.notify_max_attempts,
            backoff_seconds=cfg.notify_backoff_seconds,
            smtp_host=cfg.smtp_host,
            smtp_port=cfg.smtp_port,
            smtp_starttls=cfg.smtp_starttls,
            smtp_user=cfg.smtp_user,
            smtp_password=cfg.smtp_password,
            email_from=cfg.email_from,
            email_language=cfg.email_language,
        )
