//! Per-client bookkeeping for `--max-sessions-per-client` and `--rate`: pure logic, with
//! the clock passed in, so that every rule is unit-tested without an actor or a Docker.
//!
//! A client is a certificate subject under mutual TLS, else an IP address. Entries are
//! kept only while they still mean something: a client with sessions, or with starts
//! inside the rate window. `prune` drops the rest, so the map cannot grow with every
//! address that ever connected (issue 9: with `--rate`, it used to).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How far back `--rate` counts a client's starts.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// What one client is doing.
#[derive(Debug, Default)]
struct ClientUse {
    /// Sessions queued or running.
    active: usize,
    /// When its recent sessions were admitted, oldest first (at most a window back).
    starts: VecDeque<Instant>,
}

impl ClientUse {
    fn forget_before(&mut self, now: Instant) {
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.starts.pop_front();
        }
    }

    fn idle(&self) -> bool {
        self.active == 0 && self.starts.is_empty()
    }
}

/// Why a client may not start another session now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-sessions-per-client`: it already has `active` sessions.
    TooMany { active: usize, max: usize },
    /// `--rate`: it started `started` sessions in the last minute; room again in `wait`.
    Rate {
        started: usize,
        rate: usize,
        wait: Duration,
    },
}

impl Refusal {
    /// The sentence the client reads in its `ERROR limited`.
    pub fn describe(&self, client: &str) -> String {
        match self {
            Refusal::TooMany { active, max } => format!(
                "per-client limit reached: {client} already has {active} sessions \
                 (--max-sessions-per-client {max})"
            ),
            Refusal::Rate {
                started,
                rate,
                wait,
            } => format!(
                "rate limit reached: {client} started {started} sessions in the last minute \
                 (--rate {rate}); try again in {} s",
                wait.as_secs().max(1)
            ),
        }
    }
}

/// The per-client counts; `0` for a bound means none.
#[derive(Debug)]
pub struct ClientLimits {
    max_per_client: usize,
    rate: usize,
    clients: HashMap<String, ClientUse>,
}

impl ClientLimits {
    pub fn new(max_per_client: usize, rate: usize) -> Self {
        ClientLimits {
            max_per_client,
            rate,
            clients: HashMap::new(),
        }
    }

    /// Checks and books one more session for `client`.
    pub fn admit(&mut self, client: &str, now: Instant) -> Result<(), Refusal> {
        let (max, rate) = (self.max_per_client, self.rate);
        let usage = self.clients.entry(client.to_string()).or_default();
        usage.forget_before(now);
        let refusal = if max > 0 && usage.active >= max {
            Some(Refusal::TooMany {
                active: usage.active,
                max,
            })
        } else if rate > 0 && usage.starts.len() >= rate {
            Some(Refusal::Rate {
                started: usage.starts.len(),
                rate,
                wait: RATE_WINDOW.saturating_sub(now.duration_since(usage.starts[0])),
            })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // A refused newcomer leaves no entry behind.
            if usage.idle() {
                self.clients.remove(client);
            }
            return Err(refusal);
        }
        usage.active += 1;
        if rate > 0 {
            usage.starts.push_back(now);
        }
        Ok(())
    }

    /// Takes back a booking of `admit` that did not lead to a session (busy): it counts
    /// neither as active nor against the rate.
    pub fn unbook(&mut self, client: &str) {
        if let Some(usage) = self.clients.get_mut(client) {
            if self.rate > 0 {
                usage.starts.pop_back();
            }
        }
        self.release(client);
    }

    /// Gives back the booking of `admit`: the session is over.
    pub fn release(&mut self, client: &str) {
        if let Some(usage) = self.clients.get_mut(client) {
            usage.active = usage.active.saturating_sub(1);
            if usage.idle() {
                self.clients.remove(client);
            }
        }
    }

    /// Drops what no longer counts: starts older than the window, and clients left with
    /// neither sessions nor recent starts.
    pub fn prune(&mut self, now: Instant) {
        self.clients.retain(|_, usage| {
            usage.forget_before(now);
            !usage.idle()
        });
    }

    /// Clients with sessions, and how many each has (for the status).
    pub fn active(&self) -> Vec<(String, usize)> {
        self.clients
            .iter()
            .filter(|(_, u)| u.active > 0)
            .map(|(c, u)| (c.clone(), u.active))
            .collect()
    }

    /// How many clients are tracked at all.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_client_cap_counts_active_sessions() {
        let mut l = ClientLimits::new(2, 0);
        let now = Instant::now();
        assert_eq!(l.admit("a", now), Ok(()));
        assert_eq!(l.admit("a", now), Ok(()));
        assert_eq!(
            l.admit("a", now),
            Err(Refusal::TooMany { active: 2, max: 2 })
        );
        assert_eq!(l.admit("b", now), Ok(()));
        l.release("a");
        assert_eq!(l.admit("a", now), Ok(()));
    }

    #[test]
    fn the_rate_counts_starts_in_the_last_minute() {
        let mut l = ClientLimits::new(0, 2);
        let t0 = Instant::now();
        assert_eq!(l.admit("a", t0), Ok(()));
        l.release("a");
        assert_eq!(l.admit("a", t0 + Duration::from_secs(10)), Ok(()));
        l.release("a");
        match l.admit("a", t0 + Duration::from_secs(20)) {
            Err(Refusal::Rate {
                started: 2, wait, ..
            }) => {
                assert_eq!(wait, Duration::from_secs(40))
            }
            other => panic!("{other:?}"),
        }
        // The first start leaves the window: room for one more.
        assert_eq!(l.admit("a", t0 + RATE_WINDOW), Ok(()));
    }

    #[test]
    fn a_busy_refusal_is_not_counted_against_the_rate() {
        let mut l = ClientLimits::new(0, 1);
        let now = Instant::now();
        assert_eq!(l.admit("a", now), Ok(()));
        l.unbook("a");
        assert_eq!(l.tracked(), 0);
        assert_eq!(l.admit("a", now), Ok(()));
    }

    #[test]
    fn clients_with_nothing_left_are_pruned() {
        let mut l = ClientLimits::new(0, 5);
        let t0 = Instant::now();
        for i in 0..1000 {
            let client = format!("10.0.{}.{}", i / 256, i % 256);
            l.admit(&client, t0).unwrap();
            l.release(&client);
        }
        l.admit("busy", t0).unwrap();
        // Within the window every start still counts against its client's rate.
        l.prune(t0 + Duration::from_secs(59));
        assert_eq!(l.tracked(), 1001);
        // Past it, only the client with a session is left.
        l.prune(t0 + RATE_WINDOW);
        assert_eq!(l.tracked(), 1);
        assert_eq!(l.active(), vec![("busy".to_string(), 1)]);
    }

    #[test]
    fn a_refused_newcomer_leaves_no_entry() {
        let mut l = ClientLimits::new(0, 0);
        let now = Instant::now();
        l.admit("a", now).unwrap();
        l.release("a");
        assert_eq!(l.tracked(), 0);
        let mut l = ClientLimits::new(1, 0);
        l.admit("a", now).unwrap();
        assert!(l.admit("a", now).is_err());
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn refusals_read_as_before() {
        let r = Refusal::TooMany { active: 1, max: 1 };
        assert_eq!(
            r.describe("CN=alice"),
            "per-client limit reached: CN=alice already has 1 sessions \
             (--max-sessions-per-client 1)"
        );
        let r = Refusal::Rate {
            started: 3,
            rate: 3,
            wait: Duration::from_millis(300),
        };
        assert!(r
            .describe("1.2.3.4")
            .ends_with("(--rate 3); try again in 1 s"));
    }
}
