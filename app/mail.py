"""Mailer backends behind one small interface: ``send(Email) -> message id``.

``console`` writes the email to the log (the default for `make run`, works offline);
``ses`` sends through Amazon SES with boto3's standard credential chain and honours
boto3's own ``AWS_ENDPOINT_URL`` (so a local SES stand-in needs no code change).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Protocol

import boto3
from botocore.config import Config as BotoConfig

log = logging.getLogger("app.mail")


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    text: str
    html: str


class Mailer(Protocol):
    def send(self, email: Email) -> str:
        """Send one email; return the provider's message id or raise on failure."""


class ConsoleMailer:
    def send(self, email: Email) -> str:
        message_id = f"console-{uuid.uuid4()}"
        log.info("email to %s\nSubject: %s\n\n%s", email.to, email.subject, email.text)
        return message_id


class SESMailer:
    def __init__(self, source: str, region: str | None):
        self.source = source
        # Short timeouts and one attempt (botocore would otherwise retry by itself and
        # could send an email twice): the outbox owns retrying, with backoff.
        self.client = boto3.client(
            "ses",
            region_name=region,
            config=BotoConfig(
                connect_timeout=5, read_timeout=15, retries={"total_max_attempts": 1}
            ),
        )

    def send(self, email: Email) -> str:
        response = self.client.send_email(
            Source=self.source,
            Destination={"ToAddresses": [email.to]},
            Message={
                "Subject": {"Data": email.subject, "Charset": "UTF-8"},
                "Body": {
                    "Text": {"Data": email.text, "Charset": "UTF-8"},
                    "Html": {"Data": email.html, "Charset": "UTF-8"},
                },
            },
        )
        return response["MessageId"]


def build_mailer(config) -> Mailer:
    backend = config["MAIL_BACKEND"]
    if backend == "ses":
        return SESMailer(config["EMAIL_SOURCE"], config["REGION_NAME"])
    return ConsoleMailer()
