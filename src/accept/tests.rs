//! Accepting against in-memory snapshots and the memory store: each case is a config, a
//! sequence of submissions, and what each one gets — and what the store holds after.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use switchboard_providers::{Channel, OutboundMessage};

use super::{AcceptError, Accepted, Acceptor, Refusal, Submission};
use crate::config::{load_bytes, Environment};
use crate::dispatch::{DispatchConfig, Dispatcher, SubmitError, Workers};
use crate::metrics::Metrics;
use crate::routing::Snapshot;
use crate::store::test_support::Faulty;
use crate::store::{IdempotencyKey, MemoryStore, MessageStore};

fn snapshot(config: &str) -> Snapshot {
    let loaded = load_bytes(
        "t.toml",
        config.as_bytes(),
        &Environment::from_pairs([("HOOK_SECRET", "0123456789abcdef0123456789abcdef")]),
    );
    let Some(resolved) = loaded.config else { panic!("{:#?}", loaded.diagnostics) };
    match Snapshot::build(resolved, loaded.version, None) {
        Ok(snapshot) => snapshot,
        Err(error) => panic!("{error}"),
    }
}

struct Setup {
    current: Arc<ArcSwap<Snapshot>>,
    acceptor: Acceptor,
    store: Arc<dyn MessageStore>,
    metrics: Arc<Metrics>,
    _workers: Workers,
}

fn setup_with(config: &str, store: Arc<dyn MessageStore>, dispatch: DispatchConfig) -> Setup {
    let current = Arc::new(ArcSwap::from_pointee(snapshot(config)));
    let metrics = Arc::new(Metrics::new());
    let (dispatcher, workers) =
        Dispatcher::start(Arc::clone(&current), Arc::clone(&store), Arc::clone(&metrics), dispatch);
    let acceptor = Acceptor::new(Arc::clone(&current), dispatcher, Arc::clone(&store), Arc::clone(&metrics));
    Setup { current, acceptor, store, metrics, _workers: workers }
}

fn setup(config: &str) -> Setup {
    setup_with(config, Arc::new(MemoryStore::new(100)), DispatchConfig { queue_capacity: 100, workers: 4 })
}

/// One submission: channel, recipient, caller, idempotency key and body (the key's request hash).
#[derive(Clone, Copy)]
struct Send {
    channel: &'static str,
    to: &'static str,
    caller: Option<&'static str>,
    key: Option<(&'static str, &'static str)>,
}

const SMS: Send = Send { channel: "sms", to: "+15550002222", caller: None, key: None };

impl Send {
    fn to(self, to: &'static str) -> Send {
        Send { to, ..self }
    }
    fn key(self, key: &'static str, body: &'static str) -> Send {
        Send { key: Some((key, body)), ..self }
    }
    fn by(self, caller: &'static str) -> Send {
        Send { caller: Some(caller), ..self }
    }
    fn on(self, channel: &'static str) -> Send {
        Send { channel, ..self }
    }

    fn submission(self) -> Submission {
        let message = OutboundMessage {
            id: uuid::Uuid::now_v7().to_string(),
            channel: Channel::new(self.channel).unwrap_or_else(|e| panic!("{e:?}")),
            from: "+15550001111".into(),
            to: self.to.into(),
            subject: None,
            body: "hi".into(),
            attachments: vec![],
            tags: vec![],
        };
        Submission {
            message,
            caller: self.caller.map(str::to_owned),
            idempotency_key: self
                .key
                .map(|(key, body)| IdempotencyKey { key: key.to_owned(), request_hash: body.to_owned() }),
            status_callback: None,
        }
    }
}

/// What a submission got, in short: `new`, `replay of N` (the Nth submission's message),
/// or the refusal's name.
fn outcome(result: &Result<Accepted, AcceptError>, earlier: &[Option<String>]) -> String {
    match result {
        Ok(Accepted::New { .. }) => "new".into(),
        Ok(Accepted::Replayed { id, .. }) => match earlier.iter().position(|e| e.as_deref() == Some(id)) {
            Some(n) => format!("replay of {n}"),
            None => format!("replay of unknown {id}"),
        },
        Err(AcceptError::UnknownChannel(_)) => "unknown_channel".into(),
        Err(AcceptError::NoRoute(_)) => "no_route".into(),
        Err(AcceptError::Refused(Refusal::CountryNotAllowed { .. })) => "country_not_allowed".into(),
        Err(AcceptError::Refused(Refusal::RecipientRateLimited { .. })) => "recipient_rate_limited".into(),
        Err(AcceptError::KeyInFlight) => "key_in_flight".into(),
        Err(AcceptError::OptedOut) => "opted_out".into(),
        Err(AcceptError::Suppressed) => "suppressed".into(),
        Err(AcceptError::Submit(SubmitError::KeyReused)) => "key_reused".into(),
        Err(AcceptError::Submit(SubmitError::QueueFull)) => "queue_full".into(),
        Err(AcceptError::Submit(SubmitError::ShuttingDown)) => "shutting_down".into(),
        Err(AcceptError::Submit(SubmitError::Store(_))) => "store_unavailable".into(),
    }
}

/// Submits `sends` in order and compares what each got with `expected`; every refused message
/// must be absent from the store, every new one present.
async fn check(config: &str, sends: &[Send], expected: &[&str]) {
    let setup = setup(config);
    let mut got = Vec::new();
    let mut ids: Vec<Option<String>> = Vec::new();
    for send in sends {
        let submission = send.submission();
        let id = submission.message.id.clone();
        let result = setup.acceptor.accept(submission).await;
        got.push(outcome(&result, &ids));
        let stored = setup.store.get(&id).await.ok().flatten().is_some();
        assert_eq!(
            stored,
            matches!(result, Ok(Accepted::New { .. })),
            "stored? {id}: {}",
            got[got.len() - 1]
        );
        ids.push(matches!(result, Ok(Accepted::New { .. })).then_some(id));
    }
    assert_eq!(got, expected, "{config}");
}

const MOCK_SMS: &str = "[providers.p]\nkind = \"mock\"\n[routes.sms]\nproviders = [\"p\"]\n";

#[tokio::test]
async fn routes() {
    check(MOCK_SMS, &[SMS, SMS.on("email")], &["new", "no_route"]).await;
    // Not built in, named by no kind, routed by nothing: the client's mistake.
    check(MOCK_SMS, &[SMS.on("pigeon")], &["unknown_channel"]).await;
    // A channel only the config names (a webhook provider carries it) is known.
    let push = "[providers.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"${HOOK_SECRET}\"\nchannels = [\"push\"]\n\
                [routes.push]\nproviders = [\"hook\"]\n";
    check(push, &[SMS.on("push").to("device-1"), SMS], &["new", "no_route"]).await;
    // A channel a provider serves but no route does is refused `no_route`, as validate warns.
    let fax = push.replace("channels = [\"push\"]", "channels = [\"push\", \"fax\"]");
    check(&fax, &[SMS.on("fax").to("line-1"), SMS.on("pager").to("p")], &["no_route", "unknown_channel"])
        .await;
}

#[tokio::test]
async fn no_route_is_counted_as_a_routing_error() {
    let setup = setup(MOCK_SMS);
    let refused = setup.acceptor.accept(SMS.on("email").submission()).await;
    assert!(matches!(refused, Err(AcceptError::NoRoute(_))), "{refused:?}");
    let metrics = setup.metrics.render();
    assert!(
        metrics.contains("switchboard_routing_errors_total{channel=\"email\",reason=\"no_route\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn destination_limits() {
    let countries = format!("{MOCK_SMS}allowed_country_codes = [\"44\"]\n");
    check(&countries, &[SMS.to("+447700900123"), SMS.to("+15550002222")], &["new", "country_not_allowed"])
        .await;
    // A key that names an accepted message does not get a refused country through.
    check(
        &countries,
        &[SMS.to("+447700900123").key("k", "a"), SMS.to("+15550002222").key("k", "a")],
        &["new", "country_not_allowed"],
    )
    .await;
    let capped = format!("{MOCK_SMS}max_per_recipient_per_hour = 2\n");
    check(
        &capped,
        &[SMS, SMS, SMS, SMS.to("+15550003333")],
        &["new", "new", "recipient_rate_limited", "new"],
    )
    .await;
}

#[tokio::test]
async fn idempotency() {
    check(
        MOCK_SMS,
        &[SMS.key("k", "a"), SMS.key("k", "a"), SMS.key("k", "b"), SMS.key("other", "a")],
        &["new", "replay of 0", "key_reused", "new"],
    )
    .await;
    // Keys are per caller: one caller's key neither replays nor blocks another's.
    check(
        MOCK_SMS,
        &[SMS.by("alice").key("k", "a"), SMS.by("bob").key("k", "a"), SMS.by("alice").key("k", "a")],
        &["new", "new", "replay of 0"],
    )
    .await;
    // A retry of an accepted request gets its first answer even once a limit would refuse it;
    // a replay does not count against the cap again.
    let capped = format!("{MOCK_SMS}max_per_recipient_per_hour = 1\n");
    check(
        &capped,
        &[SMS.key("k", "a"), SMS.key("k", "a"), SMS.key("k", "b"), SMS],
        &["new", "replay of 0", "key_reused", "recipient_rate_limited"],
    )
    .await;
}

#[tokio::test]
async fn a_full_queue_refuses_and_gives_the_recipient_slot_back() {
    let slow = "[providers.p]\nkind = \"mock\"\nlatency_ms = 5000\n[routes.sms]\nproviders = [\"p\"]\n\
                max_per_recipient_per_hour = 10\n";
    let setup =
        setup_with(slow, Arc::new(MemoryStore::new(100)), DispatchConfig { queue_capacity: 1, workers: 1 });
    // One in flight and one queued at most: the third of any three is refused.
    let mut refused = 0;
    for _ in 0..3 {
        let submission = SMS.to("+15550009999").submission();
        let id = submission.message.id.clone();
        match setup.acceptor.accept(submission).await {
            Ok(_) => {}
            Err(AcceptError::Submit(SubmitError::QueueFull)) => {
                refused += 1;
                assert!(setup.store.get(&id).await.ok().flatten().is_none(), "a refused message was stored");
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(refused >= 1, "nothing was refused with a queue of one");
    // The refused messages did not use up the recipient's cap: only those accepted count.
    assert_eq!(setup.acceptor.recipients.counted("sms", "+15550009999"), 3 - refused);
}

#[tokio::test]
async fn a_caller_that_goes_away_after_its_message_is_stored_still_uses_up_the_recipients_slot() {
    let capped = format!("{MOCK_SMS}max_per_recipient_per_hour = 1\n");
    let setup = setup_with(
        &capped,
        Arc::new(Faulty { insert_ack_delay: Duration::from_millis(200), ..Faulty::new() }),
        DispatchConfig { queue_capacity: 10, workers: 1 },
    );
    let submission = SMS.submission();
    let id = submission.message.id.clone();
    // The caller gives up before the insert is acknowledged (a client that hung up).
    let gave_up = tokio::time::timeout(Duration::from_millis(20), setup.acceptor.accept(submission)).await;
    assert!(gave_up.is_err(), "the insert should still have been under way");
    // The message is stored regardless (it is accepted in a task of its own)…
    let mut stored = false;
    for _ in 0..100 {
        if setup.store.get(&id).await.ok().flatten().is_some() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored, "the message was not stored");
    // …so the recipient's one message this hour is used.
    let next = setup.acceptor.accept(SMS.submission()).await;
    assert!(matches!(next, Err(AcceptError::Refused(Refusal::RecipientRateLimited { .. }))), "{next:?}");
}

/// A retry of an accepted request gets its first answer after a reload took its route away (a
/// new request is refused), and while another retry of it is being answered.
#[tokio::test]
async fn a_retry_of_an_accepted_message_is_replayed_whatever_changed_since() {
    let setup = setup(MOCK_SMS);
    let first = setup.acceptor.accept(SMS.key("k", "a").submission()).await;
    let Ok(Accepted::New { id, .. }) = first else { panic!("{first:?}") };
    setup
        .current
        .store(Arc::new(snapshot("[providers.m]\nkind = \"mock\"\n[routes.email]\nproviders = [\"m\"]\n")));
    for send in [SMS.key("k", "a"), SMS.key("fresh", "a"), SMS.key("k", "b")] {
        let got = setup.acceptor.accept(send.submission()).await;
        let shown = outcome(&got, &[Some(id.clone())]);
        let expected = match send.key {
            Some(("k", "a")) => "replay of 0",
            Some(("k", _)) => "key_reused",
            _ => "no_route",
        };
        assert_eq!(shown, expected);
    }
    // Another retry of it being answered right now: still its first answer, not 409…
    let setup = self::setup(MOCK_SMS);
    let first = setup.acceptor.accept(SMS.key("k", "a").submission()).await;
    let Ok(Accepted::New { id, .. }) = first else { panic!("{first:?}") };
    setup.acceptor.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert("k".into());
    let got = setup.acceptor.accept(SMS.key("k", "a").submission()).await;
    assert_eq!(outcome(&got, &[Some(id)]), "replay of 0");
    // …while a key never answered yet is 409.
    setup.acceptor.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert("new".into());
    let got = setup.acceptor.accept(SMS.key("new", "a").submission()).await;
    assert_eq!(outcome(&got, &[]), "key_in_flight");
}

/// An opted-out pair is refused (nothing stored) — other recipients and other senders are not —
/// while a retry of a message accepted before the opt-out still gets its first answer.
#[tokio::test]
async fn an_opted_out_pair_is_refused_but_an_accepted_key_replays() {
    use crate::store::{InboundMessage, OptChange};
    let setup = setup("[providers.p]\nkind = \"mock\"\n[routes.sms]\nproviders = [\"p\"]\n[routes.mms]\nproviders = [\"p\"]\n");
    let keyed = SMS.key("k1", "body-1").submission();
    let first_id = keyed.message.id.clone();
    assert!(matches!(setup.acceptor.accept(keyed).await, Ok(Accepted::New { .. })));
    let stop = InboundMessage {
        id: uuid::Uuid::now_v7().to_string(),
        channel: Channel::SMS,
        from: SMS.to.into(),
        to: "+15550001111".into(),
        subject: None,
        body: "STOP".into(),
        attachments: vec![],
        provider: None,
        provider_message_id: "stop-1".into(),
        timestamp: std::time::SystemTime::now(),
        owner: None,
        opt_change: Some(OptChange::OptOut),
    };
    let received = setup.store.insert_inbound(&stop).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(received.opted_out);
    let mut ids = vec![Some(first_id)];
    let mut got = Vec::new();
    for send in [SMS, SMS.on("mms"), SMS.key("k1", "body-1"), SMS.key("k2", "body-2"), SMS.to("+15550003333")]
    {
        let mut submission = send.submission();
        if send.channel == "mms" {
            submission.message.attachments = vec!["https://example.com/a.png".into()];
        }
        let id = submission.message.id.clone();
        let result = setup.acceptor.accept(submission).await;
        got.push(outcome(&result, &ids));
        let stored = setup.store.get(&id).await.ok().flatten().is_some();
        assert_eq!(stored, matches!(result, Ok(Accepted::New { .. })), "{}", got[got.len() - 1]);
        ids.push(matches!(result, Ok(Accepted::New { .. })).then_some(id));
    }
    assert_eq!(got, ["opted_out", "opted_out", "replay of 0", "opted_out", "new"]);
}
