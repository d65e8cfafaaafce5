"""Mailer backends behind one small interface: ``send(Email) -> message id``.

``console`` writes the email to the log (the default for `make run`, works offline);
``ses`` sends through Amazon SES with boto3's standard credential chain and honours
boto3's own ``AWS_ENDPOINT_URL`` (so a local SES stand-in needs no code change).

A failed send raises one of two errors, and the difference decides what the outbox does:
``NotAccepted`` when SES certainly did not take the email (the connection was refused, or
SES answered with an error): it is retried. ``OutcomeUnknown`` when the request may have
reached SES (a timeout waiting for the answer, a connection cut mid-way): it is never
resent by itself, since that could deliver it twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from typing import Protocol

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
    ProxyConnectionError,
)

from app.core.text import one_line

log = logging.getLogger("app.mail")

NOTIFICATION_HEADER = "X-Marketplace-Notification-Id"
# SES's own limits and the connection's: at most CONNECT + READ seconds per send.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15


class NotAccepted(Exception):
    """SES did not take the email: sending it again cannot deliver it twice."""


class Throttled(NotAccepted):
    """SES refused it for the account's sending rate: sent again shortly, the attempt not
    counted."""


class QuotaExceeded(NotAccepted):
    """SES refused it because the account's 24-hour quota is spent: it waits, the attempt
    not counted."""


def refusal(exc: ClientError) -> NotAccepted:
    """What SES's error answer means for the email."""
    error = exc.response.get("Error", {})
    message = str(error.get("Message", ""))
    if "daily message quota exceeded" in message.lower():
        return QuotaExceeded(f"SES's daily sending quota is spent: {message}")
    if error.get("Code") == "Throttling" or "maximum sending rate exceeded" in message.lower():
        return Throttled(f"SES throttled the send: {message}")
    return NotAccepted(f"SES refused it: {exc}")


class OutcomeUnknown(Exception):
    """The request may have reached SES: the email may or may not have gone out."""


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    text: str
    html: str
    notification_id: int | None = None


def mime_message(email: Email, source: str) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = source
    message["To"] = one_line(email.to)
    message["Subject"] = one_line(email.subject)
    if email.notification_id is not None:
        message[NOTIFICATION_HEADER] = str(email.notification_id)
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message.as_bytes()


class Mailer(Protocol):
    def send(self, email: Email) -> str:
        """Send one email; return the provider's message id, or raise NotAccepted or
        OutcomeUnknown."""

    def max_send_rate(self) -> float | None:
        """The provider's limit in emails a second (None: none)."""


class ConsoleMailer:
    def max_send_rate(self) -> float | None:
        return None  # no limit

    def send(self, email: Email) -> str:
        message_id = f"console-{uuid.uuid4()}"
        log.info(
            "email to %s (notification %s)\nSubject: %s\n\n%s",
            email.to,
            email.notification_id,
            one_line(email.subject),
            email.text,
        )
        return message_id


class SESMailer:
    def __init__(self, source: str, region: str | None):
        self.source = source
        # One attempt (botocore would otherwise retry by itself and could send an email
        # twice): the outbox owns retrying, with backoff.
        self.client = boto3.client(
            "ses",
            region_name=region,
            config=BotoConfig(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"total_max_attempts": 1},
            ),
        )

    def send(self, email: Email) -> str:
        try:
            # The recipient comes from the message's To header (SES's rule for raw
            # messages sent without Destinations).
            response = self.client.send_raw_email(
                Source=self.source, RawMessage={"Data": mime_message(email, self.source)}
            )
        except ClientError as exc:  # SES answered: it refused the email
            raise refusal(exc) from exc
        except (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError) as exc:
            # No connection was made: nothing reached SES.
            raise NotAccepted(f"SES unreachable: {exc}") from exc
        except ParamValidationError as exc:
            raise NotAccepted(f"invalid request: {exc}") from exc
        except Exception as exc:  # a read timeout, a connection cut after the request
            raise OutcomeUnknown(f"{type(exc).__name__}: {exc}") from exc
        return response["MessageId"]

    def max_send_rate(self) -> float:
        """The account's maximum send rate, emails a second (SES's GetSendQuota)."""
        return float(self.client.get_send_quota()["MaxSendRate"])


def build_mailer(config) -> Mailer:
    backend = config["MAIL_BACKEND"]
    if backend == "ses":
        return SESMailer(config["EMAIL_SOURCE"], config["REGION_NAME"])
    return ConsoleMailer()
