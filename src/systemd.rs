//! systemd's notify protocol (sd_notify(3), through the sd-notify crate) for `Type=notify`:
//! READY=1 once the store is open and the listener bound, RELOADING=1 / READY=1 around a
//! config reload, STOPPING=1 on the way out, and WATCHDOG=1 while every reconciler is alive
//! when the unit sets `WatchdogSec=` (fed by the supervisor, `Supervisor::feed_watchdog`).
//! Without `$NOTIFY_SOCKET` (not started by systemd, or
//! `Type=simple`) each call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

fn send(states: &[NotifyState]) {
    // A lost notification costs systemd's view of the state, never the responder's work:
    // debug, not an error (the socket is absent whenever systemd did not start the process).
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify not delivered");
    }
}

/// READY=1, with a STATUS line for `systemctl status`.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// RELOADING=1 with the monotonic time systemd 253 and later require beside it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(e) => debug!(error = %e, "no monotonic clock: RELOADING=1 not sent"),
    }
}

/// STOPPING=1.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// `WatchdogSec=` of the unit, when systemd watches this process.
pub fn watchdog_limit() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// WATCHDOG=1.
pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}
