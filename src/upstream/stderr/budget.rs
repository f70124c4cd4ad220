//! How many stderr lines of one server may reach the gateway's log: a token bucket filled at the
//! policy's `log_rate` up to its burst. Lines beyond it are counted; the count is reported in one
//! summary line per interval, so a flood costs the log a bounded number of lines whatever its size.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::Rate;

/// At most one summary of suppressed lines per server in this long.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Budget {
    rate: Rate,
    tokens: f64,
    refilled: Instant,
    /// Lines counted but not logged since the last summary.
    suppressed: u64,
    last_summary: Option<Instant>,
}

/// What a summary line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub suppressed: u64,
    pub rate: Rate,
}

impl Budget {
    pub fn new(rate: Rate, now: Instant) -> Budget {
        Budget {
            rate,
            tokens: f64::from(rate.burst),
            refilled: now,
            suppressed: 0,
            last_summary: None,
        }
    }

    /// A reloaded policy's budget; what is left of the current burst carries over, capped.
    pub fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.tokens = self.tokens.min(f64::from(rate.burst));
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let per = self.rate.per.as_secs_f64();
        if per > 0.0 {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            let earned = elapsed * f64::from(self.rate.count) / per;
            self.tokens = (self.tokens + earned).min(f64::from(self.rate.burst));
        }
        self.refilled = now;
    }

    /// Whether one more line may be logged now; a line that may not is counted.
    pub fn admit(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// When the next summary is due, if lines are waiting to be reported.
    pub fn summary_due(&self) -> Option<Instant> {
        (self.suppressed > 0).then(|| match self.last_summary {
            Some(at) => at + SUMMARY_INTERVAL,
            // The first suppressed line is reported at once: the operator learns early that
            // the log is missing lines.
            None => self.refilled,
        })
    }

    /// Takes the count of suppressed lines for a summary, if one is due at `now`.
    pub fn take_summary(&mut self, now: Instant) -> Option<Summary> {
        let due = self.summary_due()?;
        if now < due {
            return None;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last_summary = Some(now);
        Some(Summary {
            suppressed,
            rate: self.rate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, burst: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
            burst,
        }
    }

    #[test]
    fn a_burst_then_the_steady_rate_then_counting() {
        let t0 = Instant::now();
        let mut b = Budget::new(rate(10, 20), t0);
        let admitted = (0..1000).filter(|_| b.admit(t0)).count();
        assert_eq!(admitted, 20, "the burst");
        // One second later: 10 more, not 20 (the bucket refills at the rate).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..1000).filter(|_| b.admit(t1)).count(), 10);
        // A long quiet spell refills the bucket only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..1000).filter(|_| b.admit(t2)).count(), 20);
    }

    #[test]
    fn one_summary_per_interval_with_the_count() {
        let t0 = Instant::now();
        let mut b = Budget::new(rate(1, 1), t0);
        assert!(b.admit(t0));
        assert_eq!(b.summary_due(), None, "nothing suppressed yet");
        assert!(!b.admit(t0));
        // The first suppressed line is reported at once.
        assert_eq!(b.take_summary(t0).map(|s| s.suppressed), Some(1));
        for _ in 0..500 {
            b.admit(t0);
        }
        assert_eq!(b.take_summary(t0 + Duration::from_secs(1)), None);
        assert_eq!(b.summary_due(), Some(t0 + SUMMARY_INTERVAL));
        let s = b.take_summary(t0 + SUMMARY_INTERVAL).expect("due");
        assert_eq!(s.suppressed, 500);
        assert_eq!(b.summary_due(), None, "the count was taken");
    }

    #[test]
    fn a_new_rate_caps_the_saved_burst() {
        let t0 = Instant::now();
        let mut b = Budget::new(rate(100, 100), t0);
        b.set_rate(rate(1, 3), t0);
        assert_eq!((0..100).filter(|_| b.admit(t0)).count(), 3);
    }
}
