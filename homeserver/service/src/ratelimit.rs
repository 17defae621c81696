//! Request rate limits: a token bucket per key (user, or address when unauthenticated).

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::config::RateLimits;

pub struct RateLimiter {
    enabled: bool,
    normal: (f64, f64),
    login: (f64, f64),
    buckets: Mutex<HashMap<(bool, String), (f64, Instant)>>,
    /// Users with a limit of their own (rate, burst), set by an administrator; (0, 0) is none.
    overrides: std::sync::RwLock<HashMap<String, (f64, f64)>>,
}

impl RateLimiter {
    pub fn new(config: &RateLimits) -> Self {
        RateLimiter {
            enabled: config.enabled,
            normal: (config.per_second, config.burst),
            login: (config.login_per_second, config.login_burst),
            buckets: Mutex::default(),
            overrides: Default::default(),
        }
    }

    /// Gives a user a limit of their own (`None`: the server's again).
    pub fn set_override(&self, user: &str, limit: Option<(f64, f64)>) {
        let mut overrides = self.overrides.write().unwrap();
        match limit {
            Some(limit) => overrides.insert(user.to_owned(), limit),
            None => overrides.remove(user),
        };
        drop(overrides);
        // A new limit starts with a full bucket.
        self.buckets.lock().unwrap().remove(&(false, user.to_owned()));
    }

    /// Takes one request from `key`'s bucket. `Err(ms)` says how long to wait before retrying.
    pub fn check(&self, key: &str, login: bool) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let own = if login { None } else { self.overrides.read().unwrap().get(key).copied() };
        let (rate, burst) = match own {
            Some((rate, burst)) if rate <= 0.0 && burst <= 0.0 => return Ok(()),
            Some(limit) => limit,
            None if login => self.login,
            None => self.normal,
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 100_000 {
            buckets.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry((login, key.to_owned())).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - *tokens) / rate.max(0.001)) * 1000.0).ceil() as u64)
        }
    }
}
