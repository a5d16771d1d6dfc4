"""pool.translate: the one place library errors become imapfs errors."""

import imaplib

import pytest

from imapfs.errors import AlreadyExists, NotFound, ProtocolError, QuotaError, ServerUnavailable
from imapfs.pool import translate


@pytest.mark.parametrize(("text", "kind"), [
    ("select failed: Mailbox doesn't exist: Archive", NotFound),
    ("select failed: [NONEXISTENT] Unknown Mailbox: Archive", NotFound),
    # Dovecot, when the folder is deleted while another command is using it:
    ("select failed: Mailbox was deleted under us (0.016 + 0.000 + 0.015 secs).", NotFound),
    ("fetch failed: [EXPUNGEISSUED] Some messages were expunged", NotFound),
    ("append failed: [OVERQUOTA] Quota exceeded", QuotaError),
    ("create failed: [ALREADYEXISTS] Mailbox already exists", AlreadyExists),
    ("fetch failed: Internal error occurred", ProtocolError),
])
def test_server_refusals_map_to_what_they_mean(text, kind):
    assert isinstance(translate(imaplib.IMAP4.error(text)), kind)


def test_network_errors_mean_the_server_is_unavailable():
    assert isinstance(translate(ConnectionResetError(104, "Connection reset by peer")), ServerUnavailable)
