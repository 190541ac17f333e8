"""Secrets stay in the environment: the values of credential variables are masked in whatever
kun-ray writes or prints (reject details, report.json, the manifest, log lines, error messages).

s3fs, gcsfs and Hugging Face read credentials from the environment themselves; kun-ray never
copies them anywhere.  This is the net under that rule, for messages that quote more than they
should (a library's error text, say).
"""

from __future__ import annotations

import logging
import os
import re

#: Names of environment variables that hold credentials.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|_KEY(_ID)?$|^AWS_ACCESS_KEY", re.IGNORECASE)
MASK = "***"
#: Shorter values are not masked: they would mask ordinary words.
MIN_LENGTH = 8


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def secret_values() -> list[str]:
    """The values of the credential variables in this process's environment, longest first."""
    values = {value for name, value in os.environ.items() if is_secret_name(name) and len(value) >= MIN_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in log records on their way out."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True
