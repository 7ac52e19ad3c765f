//! Signals and exits in the protocol's terms: which signals a client may send, their
//! names, and how a script's end becomes an `END` frame and a client exit status (§9).

use crate::messages::ScriptExit;
use crate::protocol::{End, EndReason};

/// Signals a client may send, by number (Linux numbering, as in the protocol).
pub const ALLOWED_SIGNALS: [u8; 7] = [1, 2, 3, 9, 10, 12, 15];

/// Linux signal names by number, for the allowed signals and for messages.
const SIGNAL_NAMES: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// The name of a signal a client may send; `None` for any other.
pub fn signal_name(sig: u8) -> Option<&'static str> {
    ALLOWED_SIGNALS
        .contains(&sig)
        .then(|| SIGNAL_NAMES[sig as usize])
}

/// Name of a signal for messages, for the standard Linux signals.
pub fn describe_signal(sig: i32) -> String {
    match SIGNAL_NAMES.get(sig as usize) {
        Some(name) if !name.is_empty() => format!("signal {sig} ({name})"),
        _ => format!("signal {sig}"),
    }
}

/// Maps a reason to the status a client exits with (the table in docs/protocol.md).
pub fn exit_code_for(reason: EndReason, status: Option<i32>) -> i32 {
    match reason {
        EndReason::Exited | EndReason::Signal => status.unwrap_or(1),
        EndReason::Timeout => 124,
        EndReason::Oom | EndReason::OutputLimit => 137,
        EndReason::Cancelled => 130,
        EndReason::Shutdown => 143,
        EndReason::Unknown => 125,
    }
}

/// Reads a container's exit status as a shell does: above 128 means death by a signal.
/// The fallback when the bootstrap's exact report is missing (SIGKILL, which may be the
/// OOM killer, or a container killed whole): docker-init reports a child killed by signal
/// N as 128 + N, so a `sys.exit(137)` would read as SIGKILL here, as in a shell.
pub fn classify_exit(code: i64, duration_ms: u64) -> End {
    let status = code.clamp(0, 255) as i32;
    let exit = if (129..=128 + 64).contains(&status) {
        ScriptExit::Signal(status - 128)
    } else {
        ScriptExit::Code(status)
    };
    end_for_exit(exit, duration_ms)
}

/// The END for a script whose end the bootstrap reported exactly.
pub fn end_for_exit(exit: ScriptExit, duration_ms: u64) -> End {
    match exit {
        ScriptExit::Code(code) => End {
            reason: EndReason::Exited,
            exit_code: code,
            signal: None,
            duration_ms,
            message: String::new(),
        },
        ScriptExit::Signal(sig) => End {
            reason: EndReason::Signal,
            exit_code: 128 + sig,
            signal: Some(sig),
            duration_ms,
            message: format!("killed by {}", describe_signal(sig)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_like_a_shell() {
        let e = classify_exit(0, 5);
        assert_eq!(
            (e.reason, e.exit_code, e.signal),
            (EndReason::Exited, 0, None)
        );
        let e = classify_exit(3, 5);
        assert_eq!((e.reason, e.exit_code), (EndReason::Exited, 3));
        let e = classify_exit(137, 5);
        assert_eq!(
            (e.reason, e.exit_code, e.signal),
            (EndReason::Signal, 137, Some(9))
        );
        assert_eq!(e.message, "killed by signal 9 (SIGKILL)");
        let e = classify_exit(143, 5);
        assert_eq!(e.signal, Some(15));
        let e = classify_exit(255, 5);
        assert_eq!((e.reason, e.exit_code), (EndReason::Exited, 255));
    }

    #[test]
    fn reasons_map_to_documented_statuses() {
        assert_eq!(exit_code_for(EndReason::Timeout, None), 124);
        assert_eq!(exit_code_for(EndReason::Oom, None), 137);
        assert_eq!(exit_code_for(EndReason::OutputLimit, None), 137);
        assert_eq!(exit_code_for(EndReason::Cancelled, None), 130);
        assert_eq!(exit_code_for(EndReason::Shutdown, None), 143);
        assert_eq!(exit_code_for(EndReason::Exited, Some(7)), 7);
    }

    #[test]
    fn only_listed_signals_may_be_sent() {
        assert_eq!(signal_name(2), Some("SIGINT"));
        assert_eq!(signal_name(19), None);
        assert_eq!(describe_signal(9), "signal 9 (SIGKILL)");
        assert_eq!(describe_signal(40), "signal 40");
    }
}
