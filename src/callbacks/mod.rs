//! Status callbacks out: the client side of telling callers what became of their messages.
//!
//! Every change of a message's `status` or `delivery_status` is POSTed to its
//! `status_callback` URL, signed per the [Standard Webhooks](https://www.standardwebhooks.com)
//! spec (symmetric `v1`, HMAC-SHA256 keyed by `SWITCHBOARD_CALLBACK_SECRET`). This module holds
//! the pieces without state: the secret ([`CallbackSecret`]) and signature ([`sign`]), the URL
//! and address policy against server-side request forgery ([`check_url`], [`refused`]), one
//! delivery ([`Callbacks::deliver`]), and the retry schedule ([`backoff`], [`MAX_AGE`]). The
//! durable outbox and the worker that calls [`Callbacks::deliver`] live with the store.
//!
//! Where callbacks may go: https URLs whose host is a public address; loopback receivers (over
//! http or https) only with `--allow-loopback-callbacks`. Private (RFC 1918), carrier-grade
//! NAT, link-local (cloud metadata), IPv6 unique local, unspecified, multicast and broadcast
//! addresses are refused when the message is accepted (IP address hosts) and again when the
//! callback is sent (every address a host name resolves to), so a name re-pointed at an
//! internal address after acceptance (DNS rebinding) is still refused. Redirects are not
//! followed (a redirect is a failed delivery) and no proxy is used.

mod backoff;
mod client;
mod policy;
mod secret;

pub use backoff::{backoff, FIRST_STEP, MAX_AGE, MAX_STEP};
pub use client::{Callbacks, ClientError, DeliveryError, CONCURRENCY, DEFAULT_TIMEOUT, MAX_ANSWER_BYTES};
pub use policy::{check_url, classify, refused, AddressClass, UrlError, MAX_URL_LEN};
pub use secret::{
    new_secret_text, sign, CallbackSecret, SecretError, MAX_SECRET_BYTES, MIN_SECRET_BYTES, NEW_SECRET_BYTES,
    SECRET_ENV, SECRET_PREFIX,
};
