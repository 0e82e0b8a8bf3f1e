"""Checking logins, and backing off after failed ones, for the REST API and the Gradio login page alike.

Passwords are compared in constant time. Failed logins are counted per user name and per client address: after
``FAILURES_BEFORE_BACK_OFF`` failures within ``FAILURE_WINDOW_S`` every further attempt for that user or from that
address is refused, without looking at the password, until a delay has passed that doubles with each further
failure (1 s, 2 s, 4 s ... at most ``MAX_DELAY_S``). Refused attempts do not lengthen the delay, so a user locked
out by someone else's guessing gets back in within a minute at worst.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

FAILURES_BEFORE_BACK_OFF = 3
FAILURE_WINDOW_S = 600.0
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
# Failed attempts with made-up user names must not grow memory without bound.
MAX_TRACKED_KEYS = 10_000


class LoginOutcome(str, Enum):
    OK = "ok"
    WRONG = "wrong"  # unknown user or wrong password (the two are not told apart)
    BACKING_OFF = "backing_off"  # refused without checking: too many recent failures


@dataclass(frozen=True)
class LoginResult:
    outcome: LoginOutcome
    retry_after: int = 0  # whole seconds to wait before the next attempt (BACKING_OFF only)

    @property
    def ok(self) -> bool:
        return self.outcome is LoginOutcome.OK

    @property
    def backing_off(self) -> bool:
        return self.outcome is LoginOutcome.BACKING_OFF


class LoginGuard:
    """The app's logins (``Settings.auth``) with failed-login back-off. Thread-safe.

    ``clock``: seconds, monotonic; tests pass a fake one so that they need not sleep.
    """

    def __init__(self, credentials: Iterable[tuple[str, str]], *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._digests = {user: _digest(password) for user, password in credentials}
        # Compared against when the user is unknown, so the time taken does not tell which user names exist.
        self._unknown_user_digest = _digest(secrets.token_hex(16))
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    @property
    def logins_on(self) -> bool:
        return bool(self._digests)

    def check(self, user: str, password: str, client: str | None) -> LoginResult:
        """Check one login attempt from ``client`` (an address; None when unknown, which backs off per user only)."""
        # Loopback addresses are not counted: behind a --share link every client arrives from 127.0.0.1, and one
        # person's typos must not delay everybody's logins.
        keys = [("user", user)] + ([("client", client)] if client and not _is_loopback(client) else [])
        with self._lock:
            now = self._clock()
            wait = max(self._wait_s(key, now) for key in keys)
            if wait > 0:
                return LoginResult(LoginOutcome.BACKING_OFF, retry_after=max(1, math.ceil(wait)))
            expected = self._digests.get(user, self._unknown_user_digest)
            if hmac.compare_digest(_digest(password), expected) and user in self._digests:
                # A success clears no count: the API checks the password on every request, so a reset would
                # give whoever guesses between the real user's requests fresh tries each time. Failures age out
                # of the window instead.
                return LoginResult(LoginOutcome.OK)
            for key in keys:
                # Unknown names can never succeed, so they need no brake; counting them would let made-up names
                # push the real users' counts out of the table.
                if key[0] != "user" or user in self._digests:
                    self._record_failure(key, now)
            return LoginResult(LoginOutcome.WRONG)

    def gradio_auth(self, username: str, password: str) -> bool:
        """For Gradio's ``launch(auth=...)``: Gradio calls it with the login form's fields and gives no client
        address, so the back-off there is per user name only."""
        return self.check(username, password, None).ok

    def _wait_s(self, key: tuple[str, str], now: float) -> float:
        failures = self._failures.get(key)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - FAILURE_WINDOW_S:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return 0.0
        if len(failures) < FAILURES_BEFORE_BACK_OFF:
            return 0.0
        delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (len(failures) - FAILURES_BEFORE_BACK_OFF))
        return max(0.0, failures[-1] + delay - now)

    def _record_failure(self, key: tuple[str, str], now: float) -> None:
        self._failures.setdefault(key, deque()).append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > MAX_TRACKED_KEYS:
            self._failures.popitem(last=False)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _digest(password: str) -> bytes:
    # Equal-length digests make the comparison's time independent of the password's length; "surrogatepass"
    # because a form may carry text that is not valid Unicode, and that must be a wrong password, not an error.
    return hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
