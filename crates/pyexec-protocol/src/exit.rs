//! The exit status of a session's end (protocol §9), in one place for both ends: the
//! server derives `END.exit_code` here, and a client exits with that value, or with one
//! of the statuses here for what no `END` tells (`CANNOT_RUN`, `STDOUT_CLOSED`).

use crate::frame::EndReason;

/// SIGINT, what a client sends for Ctrl-C (§7): a script killed by it exits 130.
pub const SIGINT: i32 = 2;
/// SIGPIPE, what a local process dies of when it writes to a closed pipe.
pub const SIGPIPE: i32 = 13;

/// The client could not run the script: any `ERROR` frame, a lost connection, a TLS
/// failure, malformed data before a terminal frame (and, for a command-line client, a
/// usage error). The server never puts it in `END`.
pub const CANNOT_RUN: i32 = 125;

/// The reference client's local addition: its own stdout was closed (EPIPE), so it
/// exits as a local process killed by SIGPIPE would.
pub const STDOUT_CLOSED: i32 = killed_by(SIGPIPE);

/// The status of a death by signal N, as a shell reports it: 128 + N.
pub const fn killed_by(signal: i32) -> i32 {
    128 + signal
}

/// The status for an `END` of `reason` (the table of §9). For `exited` and `signal` it is
/// the script's own `status` (S, or 128 + N), 1 if that is unknown; every other reason has
/// a fixed status.
pub fn exit_code_for(reason: EndReason, status: Option<i32>) -> i32 {
    match reason {
        EndReason::Exited | EndReason::Signal => status.unwrap_or(1),
        EndReason::Timeout => 124,
        EndReason::Oom | EndReason::OutputLimit => 137,
        EndReason::Cancelled => 130,
        EndReason::Shutdown => 143,
        EndReason::Unknown => CANNOT_RUN,
    }
}

/// The signal an exit status (0–255) stands for when read as a shell reads `$?`, the
/// fallback of §9 when the script's exact end is unknown: 129–192 is a death by signal
/// status − 128; 0–128 and 193–255 are exits (so `sys.exit(137)` reads as SIGKILL).
pub fn signal_of_status(status: i32) -> Option<i32> {
    (129..=128 + 64).contains(&status).then(|| status - 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_documented_statuses() {
        assert_eq!(exit_code_for(EndReason::Timeout, None), 124);
        assert_eq!(exit_code_for(EndReason::Oom, None), 137);
        assert_eq!(exit_code_for(EndReason::OutputLimit, None), 137);
        assert_eq!(exit_code_for(EndReason::Cancelled, None), 130);
        assert_eq!(exit_code_for(EndReason::Shutdown, None), 143);
        assert_eq!(exit_code_for(EndReason::Exited, Some(7)), 7);
        assert_eq!(exit_code_for(EndReason::Signal, Some(killed_by(9))), 137);
    }

    #[test]
    fn statuses_read_like_a_shell() {
        for (status, signal) in [
            (0, None),
            (1, None),
            (128, None),
            (129, Some(1)),
            (130, Some(SIGINT)),
            (137, Some(9)),
            (192, Some(64)),
            (193, None),
            (255, None),
        ] {
            assert_eq!(signal_of_status(status), signal, "{status}");
            if let Some(sig) = signal {
                assert_eq!(killed_by(sig), status);
            }
        }
    }

    #[test]
    fn the_clients_own_statuses() {
        assert_eq!(CANNOT_RUN, 125);
        assert_eq!(STDOUT_CLOSED, 141);
        // A Ctrl-C that killed the script and one that cancelled the session read alike.
        assert_eq!(killed_by(SIGINT), exit_code_for(EndReason::Cancelled, None));
    }
}
