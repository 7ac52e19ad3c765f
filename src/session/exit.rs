//! Signals and exits in the protocol's terms: which signals a client may send, their
//! names, and how a script's end becomes an `END` frame. The exit statuses themselves
//! (§9) are the protocol crate's, shared with the clients.

use crate::messages::ScriptExit;
use crate::protocol::exit::{killed_by, signal_of_status};
use crate::protocol::{End, EndReason};

/// The status a client exits with for each reason: the protocol's one table (§9).
pub use crate::protocol::exit::exit_code_for;

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

/// Reads a container's exit status as a shell does: above 128 means death by a signal.
/// The fallback when the bootstrap's exact report is missing (SIGKILL, which may be the
/// OOM killer, or a container killed whole): docker-init reports a child killed by signal
/// N as 128 + N, so a `sys.exit(137)` would read as SIGKILL here, as in a shell.
pub fn classify_exit(code: i64, duration_ms: u64) -> End {
    let status = code.clamp(0, 255) as i32;
    let exit = match signal_of_status(status) {
        Some(sig) => ScriptExit::Signal(sig),
        None => ScriptExit::Code(status),
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
            usage: Default::default(),
        },
        ScriptExit::Signal(sig) => End {
            reason: EndReason::Signal,
            exit_code: killed_by(sig),
            signal: Some(sig),
            duration_ms,
            usage: Default::default(),
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
    fn only_listed_signals_may_be_sent() {
        assert_eq!(signal_name(2), Some("SIGINT"));
        assert_eq!(signal_name(19), None);
        assert_eq!(describe_signal(9), "signal 9 (SIGKILL)");
        assert_eq!(describe_signal(40), "signal 40");
    }
}
