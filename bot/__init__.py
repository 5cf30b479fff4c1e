"""cv-dsr-bot: GDPR data-subject requests (export and erasure) against Azure Custom Vision."""

__version__ = "0.1.0"
