"""Failed logins back off: per user name and per client address, never reset by the real user's successes."""

from __future__ import annotations

from app.logins import FAILURE_WINDOW_S, MAX_DELAY_S, LoginGuard, LoginOutcome

USERS = (("alice", "wonderland"), ("bob", "builder"))


class FakeClock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_three_wrong_passwords_back_off_one_second_then_doubling_up_to_a_minute():
    clock = FakeClock()
    guard = LoginGuard(USERS, clock=clock)
    for _ in range(3):
        assert guard.check("alice", "guess", "10.0.0.1").outcome is LoginOutcome.WRONG
    refused = guard.check("alice", "wonderland", "10.0.0.1")  # even the right password is not looked at
    assert refused.backing_off and refused.retry_after == 1
    delays = []
    for _ in range(10):
        clock.now += guard.check("alice", "x", "10.0.0.1").retry_after
        assert guard.check("alice", "guess", "10.0.0.1").outcome is LoginOutcome.WRONG
        delays.append(guard.check("alice", "wonderland", "10.0.0.1").retry_after)
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60, 60, 60] and MAX_DELAY_S == 60
    clock.now += 60
    assert guard.check("alice", "wonderland", "10.0.0.1").ok


def test_the_back_off_holds_per_user_name_and_per_client_address_but_not_loopback():
    clock = FakeClock()
    guard = LoginGuard(USERS, clock=clock)
    for _ in range(3):
        guard.check("alice", "guess", "10.0.0.1")
    assert guard.check("alice", "wonderland", "10.0.0.2").backing_off, "the user, from another address"
    assert guard.check("bob", "builder", "10.0.0.1").backing_off, "the address, for another user"
    assert guard.check("bob", "builder", "10.0.0.2").ok
    assert not guard.gradio_auth("alice", "wonderland"), "the page's login backs off by user too"
    for _ in range(3):  # behind a --share link everyone arrives from 127.0.0.1: the address is not counted
        guard.check("bob", "guess", "127.0.0.1")
    assert guard.check("carol", "x", "127.0.0.1").outcome is LoginOutcome.WRONG


def test_failures_age_out_after_ten_minutes_and_the_real_users_requests_reset_nothing():
    clock = FakeClock()
    guard = LoginGuard(USERS, clock=clock)
    guard.check("alice", "guess", None)
    guard.check("alice", "guess", None)
    clock.now += FAILURE_WINDOW_S + 1
    guard.check("alice", "guess", None)
    assert guard.check("alice", "wonderland", None).ok, "two of the three failures were too old to count"
    # A guesser between the real user's requests (the API checks her password on each) still backs off.
    assert guard.check("alice", "guess", None).outcome is LoginOutcome.WRONG
    assert guard.check("alice", "wonderland", None).ok
    assert guard.check("alice", "guess", None).outcome is LoginOutcome.WRONG
    assert guard.check("alice", "guess", None).backing_off, "her success in between reset nothing"
    clock.now += 2
    assert guard.gradio_auth("alice", "wonderland") and not guard.gradio_auth("alice", "guess")
    assert not guard.gradio_auth("mallory", "wonderland") and not guard.gradio_auth("alice", "")
    for name in range(50):  # made-up names are not tracked, so they cannot push the real users' counts out
        guard.check(f"nobody{name}", "x", None)
    assert ("user", "nobody1") not in guard._failures and ("user", "alice") in guard._failures
