//! A provider's live health: its circuit breaker, its rate-limit bucket and any pause a 429
//! asked for. Shared by every dispatch to that provider; one provider's health never touches
//! another's.

mod breaker;
mod limiter;

pub use breaker::{Breaker, BreakerState, Permit, Verdict};
pub use limiter::{Pause, TokenBucket};

use crate::config::resolved::ProviderSettings;

/// Everything the dispatcher tracks about one provider instance.
#[derive(Debug)]
pub struct ProviderHealth {
    pub breaker: Breaker,
    pub bucket: Option<TokenBucket>,
    pub pause: Pause,
}

impl ProviderHealth {
    pub fn new(settings: &ProviderSettings) -> Self {
        ProviderHealth {
            breaker: Breaker::new(settings.breaker),
            bucket: settings.rate_limit.map(TokenBucket::new),
            pause: Pause::default(),
        }
    }
}
