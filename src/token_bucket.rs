//! A token bucket with the clock passed in: bounds how often a client may do a cheap
//! thing that is costly on our side (a SIGNAL frame is one Docker API request).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: u32,
    /// Time to earn one token back.
    every: Duration,
    tokens: u32,
    /// When the last token was earned (or the bucket was full).
    since: Instant,
}

impl TokenBucket {
    /// `burst` tokens at once, then one more each `every`.
    pub fn new(burst: u32, every: Duration, now: Instant) -> Self {
        TokenBucket {
            burst,
            every,
            tokens: burst,
            since: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.tokens < self.burst && !self.every.is_zero() {
            let earned =
                now.saturating_duration_since(self.since).as_nanos() / self.every.as_nanos();
            let room = u128::from(self.burst - self.tokens);
            if earned >= room {
                self.tokens = self.burst;
                self.since = now;
            } else if earned > 0 {
                self.tokens += earned as u32;
                // Keep the part of a token already earned.
                self.since += self.every * earned as u32;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        if self.tokens == self.burst {
            self.since = now;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_period() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = TokenBucket::new(3, ms(100), t0);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + ms(99)));
        assert!(b.take(t0 + ms(100)));
        assert!(!b.take(t0 + ms(150)));
        // Partial progress is kept: 100 ms after the last token was earned, not after
        // the refused attempt.
        assert!(b.take(t0 + ms(200)));
        // A long pause refills to the burst and no further.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn a_flood_gets_no_more_than_the_burst_plus_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, Duration::from_millis(200), t0);
        // 20,000 attempts spread over 2 s: 10 at once, then 5 a second.
        let granted = (0..20_000u32)
            .filter(|i| b.take(t0 + Duration::from_micros(u64::from(*i) * 100)))
            .count();
        assert_eq!(granted, 10 + 9);
    }
}
