"""Notices to admins: an e-mail through the configured SMTP server and/or a JSON POST to a webhook.
A notice that fails is logged and dropped: the audit's result is recorded either way."""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.request
from email.message import EmailMessage

from .config import Settings

log = logging.getLogger(__name__)


def send_email(settings: Settings, recipient: str, subject: str, body: str) -> None:
    config = settings.notify
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = config.sender, recipient, subject
    message.set_content(body)
    with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=config.timeout_s) as smtp:
        if config.smtp_starttls:
            smtp.starttls()
        if config.smtp_user:
            smtp.login(config.smtp_user, config.smtp_password or "")
        smtp.send_message(message)


def post_webhook(url: str, payload: dict, timeout_s: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (an admin's URL)
        response.read()


def notify(settings: Settings, email: str | None, webhook: str | None, subject: str, body: str, payload: dict) -> list[str]:
    """Send what is configured; return the channels that failed (each logged)."""
    failed = []
    if email:
        try:
            if not settings.notify.smtp_host:
                raise ValueError("notify.smtp_host is not configured")
            send_email(settings, email, subject, body)
        except (OSError, smtplib.SMTPException, ValueError) as error:
            log.warning("notice to %s not sent: %s", email, error)
            failed.append("email")
    if webhook:
        try:
            post_webhook(webhook, payload, settings.notify.timeout_s)
        except (OSError, ValueError) as error:
            log.warning("webhook notice not sent: %s", error)
            failed.append("webhook")
    return failed
