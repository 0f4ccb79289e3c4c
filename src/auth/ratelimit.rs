//! Brute-force slowing for authentication: failed attempts per client address in a sliding
//! window; past the limit the address is refused for a while (growing with repeat offences, up
//! to a cap) without the token being looked at.
//!
//! What it is not: a general request rate limiter, or shared between replicas (each process
//! counts on its own; with N replicas an attacker gets at most N times the budget, still far
//! from guessing a 256-bit token). Counting is in memory and bounded.
//!
//! Decisions:
//! - Only failures count. A success never resets anything: otherwise an attacker holding one
//!   valid token of their own could interleave it with guesses and never be slowed.
//! - IPv6 clients are keyed by their /64, since one host is normally handed a whole /64.
//!   IPv4-mapped IPv6 addresses count as the IPv4 address. Loopback is not exempt.
//! - Lockouts end, and repeat-offence levels decay after a quiet period, so no address is
//!   ever locked out for good.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tunables. `Default` is what production uses.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Failures allowed inside `window` before a lockout.
    pub max_failures: usize,
    /// The sliding window failures are counted in.
    pub window: Duration,
    /// First lockout; each further lockout doubles it.
    pub base_lockout: Duration,
    /// Longest lockout.
    pub max_lockout: Duration,
    /// After this long without a failure (and not locked out), the offence level resets.
    pub decay_after: Duration,
    /// Most addresses tracked at once; past it the least recently seen are dropped.
    pub max_tracked: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            max_failures: 20,
            window: Duration::from_secs(60),
            base_lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(15 * 60),
            decay_after: Duration::from_secs(30 * 60),
            max_tracked: 100_000,
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Times of the failures inside the window, oldest first (at most `max_failures`).
    failures: Vec<Instant>,
    blocked_until: Option<Instant>,
    /// How many lockouts in a row without a quiet period in between.
    strikes: u32,
    last_seen: Instant,
}

/// Failure counter keyed by client address.
#[derive(Debug)]
pub struct FailureLimiter {
    cfg: RateLimitConfig,
    map: Mutex<HashMap<IpAddr, Entry>>,
}

/// The address we count under: IPv4 as is, IPv6 reduced to its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s.max(1)
    }
}

impl FailureLimiter {
    pub fn new(cfg: RateLimitConfig) -> Self {
        FailureLimiter {
            cfg,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent in a way that
        // matters (worst case a counter is off), so carry on after poisoning.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(retry_after_secs)` if the address is locked out now.
    pub fn check(&self, ip: IpAddr) -> Option<u64> {
        self.check_at(ip, Instant::now())
    }

    pub(crate) fn check_at(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let map = self.lock();
        let e = map.get(&bucket(ip))?;
        match e.blocked_until {
            Some(until) if until > now => Some(ceil_secs(until - now)),
            _ => None,
        }
    }

    /// Records one failed authentication. Returns `Some(retry_after_secs)` if this failure
    /// started a lockout.
    pub fn record_failure(&self, ip: IpAddr) -> Option<u64> {
        self.record_failure_at(ip, Instant::now())
    }

    pub(crate) fn record_failure_at(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let key = bucket(ip);
        let mut map = self.lock();
        if !map.contains_key(&key) && map.len() >= self.cfg.max_tracked {
            self.evict(&mut map, now);
        }
        let cfg = &self.cfg;
        let e = map.entry(key).or_insert_with(|| Entry {
            failures: Vec::new(),
            blocked_until: None,
            strikes: 0,
            last_seen: now,
        });
        // Offence level decays after a quiet period counted from the later of the last
        // failure and the end of the last lockout.
        let quiet_since = match e.blocked_until {
            Some(until) if until > e.last_seen => until,
            _ => e.last_seen,
        };
        if now.saturating_duration_since(quiet_since) >= cfg.decay_after {
            e.strikes = 0;
        }
        e.last_seen = now;
        if matches!(e.blocked_until, Some(until) if until > now) {
            // Failures while locked out are not even checked; nothing more to count.
            return None;
        }
        e.failures
            .retain(|t| now.saturating_duration_since(*t) < cfg.window);
        e.failures.push(now);
        if e.failures.len() < cfg.max_failures {
            return None;
        }
        e.failures.clear();
        e.strikes = e.strikes.saturating_add(1);
        let factor = 1u32 << e.strikes.saturating_sub(1).min(16);
        let lockout = cfg
            .base_lockout
            .checked_mul(factor)
            .unwrap_or(cfg.max_lockout)
            .min(cfg.max_lockout);
        e.blocked_until = Some(now + lockout);
        Some(ceil_secs(lockout))
    }

    /// Drops idle entries; if that frees nothing, the least recently seen tenth.
    fn evict(&self, map: &mut HashMap<IpAddr, Entry>, now: Instant) {
        let cfg = &self.cfg;
        map.retain(|_, e| {
            let blocked = matches!(e.blocked_until, Some(u) if u > now);
            let recent = now.saturating_duration_since(e.last_seen) < cfg.window;
            let has_strikes =
                e.strikes > 0 && now.saturating_duration_since(e.last_seen) < cfg.decay_after;
            blocked || recent || has_strikes
        });
        if map.len() < cfg.max_tracked {
            return;
        }
        // Still full of recent entries (a flood from many addresses): drop the least recently
        // seen tenth, addresses not locked out first, so a flood cannot free a locked-out one.
        let rank = |e: &Entry| (matches!(e.blocked_until, Some(u) if u > now), e.last_seen);
        let mut ranks: Vec<(bool, Instant)> = map.values().map(rank).collect();
        if ranks.len() < 2 {
            map.clear();
            return;
        }
        let k = (ranks.len() / 10).max(1);
        let (_, cut, _) = ranks.select_nth_unstable(k - 1);
        let cut = *cut;
        map.retain(|_, e| rank(e) > cut);
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn small() -> RateLimitConfig {
        RateLimitConfig {
            max_failures: 5,
            window: Duration::from_secs(60),
            base_lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(900),
            decay_after: Duration::from_secs(1800),
            max_tracked: 100,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    #[test]
    fn locks_after_n_failures_and_unlocks() {
        let l = FailureLimiter::new(small());
        let t0 = Instant::now();
        for i in 0..4 {
            assert_eq!(
                l.record_failure_at(ip(1), t0 + Duration::from_secs(i)),
                None
            );
            assert_eq!(l.check_at(ip(1), t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(
            l.record_failure_at(ip(1), t0 + Duration::from_secs(4)),
            Some(30)
        );
        assert_eq!(l.check_at(ip(1), t0 + Duration::from_secs(4)), Some(30));
        assert_eq!(l.check_at(ip(1), t0 + Duration::from_secs(20)), Some(14));
        // another address is unaffected
        assert_eq!(l.check_at(ip(2), t0 + Duration::from_secs(5)), None);
        // the lockout ends
        assert_eq!(l.check_at(ip(1), t0 + Duration::from_secs(35)), None);
    }

    #[test]
    fn window_slides() {
        let l = FailureLimiter::new(small());
        let t0 = Instant::now();
        // 4 failures, then a gap longer than the window, then 4 more: never 5 in 60 s
        for i in 0..4 {
            l.record_failure_at(ip(1), t0 + Duration::from_secs(i));
        }
        for i in 0..4 {
            assert_eq!(
                l.record_failure_at(ip(1), t0 + Duration::from_secs(70 + i)),
                None
            );
        }
        assert_eq!(l.check_at(ip(1), t0 + Duration::from_secs(75)), None);
    }

    #[test]
    fn lockouts_grow_to_cap_then_decay() {
        let l = FailureLimiter::new(small());
        let mut now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..8 {
            let mut got = None;
            for _ in 0..5 {
                got = l.record_failure_at(ip(7), now);
            }
            let secs = got.expect("locked");
            seen.push(secs);
            now += Duration::from_secs(secs + 1);
            assert_eq!(l.check_at(ip(7), now), None);
        }
        assert_eq!(seen, vec![30, 60, 120, 240, 480, 900, 900, 900]);
        // After a quiet period, the next lockout is short again.
        now += Duration::from_secs(1800);
        let mut got = None;
        for _ in 0..5 {
            got = l.record_failure_at(ip(7), now);
        }
        assert_eq!(got, Some(30));
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_v4_as_v4() {
        let l = FailureLimiter::new(small());
        let t0 = Instant::now();
        for i in 0..5u16 {
            let a: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i + 1));
            l.record_failure_at(a, t0);
        }
        let other_host_same_64: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        assert!(l.check_at(other_host_same_64, t0).is_some());
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.check_at(other_64, t0).is_none());

        for _ in 0..5 {
            l.record_failure_at("::ffff:10.0.0.9".parse().unwrap(), t0);
        }
        assert!(l.check_at(ip(9), t0).is_some());
    }

    #[test]
    fn loopback_is_not_exempt() {
        let l = FailureLimiter::new(small());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..5 {
            l.record_failure(lo);
        }
        assert!(l.check(lo).is_some());
    }

    #[test]
    fn memory_is_bounded_and_active_offenders_survive_eviction() {
        let l = FailureLimiter::new(small());
        let t0 = Instant::now();
        // Lock out one address first.
        for _ in 0..5 {
            l.record_failure_at(ip(1), t0);
        }
        // Then a flood of distinct addresses, well past the cap.
        for i in 0..1000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            l.record_failure_at(a, t0 + Duration::from_millis(u64::from(i) + 1));
            assert!(l.tracked() <= 100);
        }
        assert!(l.check_at(ip(1), t0 + Duration::from_secs(2)).is_some());
    }
}
