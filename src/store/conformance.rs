//! The two-way messaging semantics every store must keep, checked through [`MessageStore`] only,
//! so each store runs the same checks (SQLite and PostgreSQL on a fresh database). Every check
//! uses phone numbers, addresses, provider ids and API keys of its own, so it holds whatever
//! else the store holds; the checks panic with what differed.

use crate::store::Meta;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_providers::{Channel, OutboundMessage};

use super::conversation::{preview, LastMessage};
use super::delivery::RETRIED_EVENT;
use super::delivery::{ReceiptApplied, ReceiptRecord, Source, MAX_EVENTS};
use super::search::{recipient_key, SEARCH_SCAN_LIMIT};
use super::{
    blocked, Blocked, ConversationMessage, ConversationView, DeliveryStatus, Direction, Failure, FailureCode,
    Final, IdempotencyKey, InboundMessage, Inserted, Listed, MessageFilter, MessageStore, MessageView,
    OptChange, OptOut, OptOutKey, Page, Received, Retried, SearchPosition, Status, StoreError,
};

/// Runs every check, one after the other.
pub(crate) async fn run_all(store: Arc<dyn MessageStore>) {
    outbound_joins_conversations(&store).await;
    keyed_insert_counts_once(&store).await;
    inbound_and_redelivery(&store).await;
    concurrent_redeliveries(&store).await;
    opt_out_changes(&store).await;
    opt_out_listing(&store).await;
    conversation_paging(&store).await;
    viewer_filtering(&store).await;
    conversation_messages_paging(&store).await;
    outbound_status_shown(&store).await;
    receipts_move_delivery_status_forward(&store).await;
    callbacks_go_out_in_order(&store).await;
    suppressions_block_every_sender(&store).await;
    events_are_capped(&store).await;
    receipts_before_the_answer(&store).await;
    search_filters(&store).await;
    search_pages_under_concurrent_inserts(&store).await;
    search_pages_stop_at_the_scan_limit(&store).await;
    retry_gives_a_failed_message_a_fresh_start(&store).await;
    retry_idempotency(&store).await;
    views_read_many_as_get_reads_one(&store).await;
    names_holding_nul_match_nothing(&store).await;
}

fn ok<T>(result: Result<T, StoreError>, what: &str) -> T {
    result.unwrap_or_else(|error| panic!("{what}: {error}"))
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An API key name no other check uses.
fn new_owner() -> String {
    format!("key-{}", new_id())
}

/// `count` (at most 10) E.164 numbers no other check uses, in ascending order.
fn phones(count: usize) -> Vec<String> {
    let base = (uuid::Uuid::now_v7().as_u128() as u64) % 1_000_000_000;
    (0..count).map(|i| format!("+1{base:09}{i}")).collect()
}

/// `+1 (201) 555-0123` for `+12015550123`: the same number as conversations compare it.
fn formatted(phone: &str) -> String {
    format!("+1 ({}) {}-{}", &phone[2..5], &phone[5..8], &phone[8..])
}

/// `count` email addresses no other check uses, in ascending order.
fn emails(count: usize) -> Vec<String> {
    let base = uuid::Uuid::now_v7().simple().to_string();
    (0..count).map(|i| format!("c{i}-{base}@example.com")).collect()
}

fn outbound(channel: Channel, from: &str, to: &str, body: &str) -> OutboundMessage {
    OutboundMessage {
        id: new_id(),
        channel,
        from: from.to_owned(),
        to: to.to_owned(),
        subject: None,
        body: body.to_owned(),
        attachments: vec!["https://example.com/out.png".to_owned()],
        tags: vec![],
    }
}

/// A whole number of milliseconds, as every store keeps times.
const SENT_AT_MS: u64 = 1_700_000_000_123;

fn inbound(channel: Channel, from: &str, to: &str, body: &str, provider_id: &str) -> InboundMessage {
    InboundMessage {
        id: new_id(),
        channel,
        from: from.to_owned(),
        to: to.to_owned(),
        subject: None,
        body: body.to_owned(),
        attachments: vec!["https://example.com/in.png".to_owned()],
        provider: Some("conformance-provider".to_owned()),
        provider_message_id: provider_id.to_owned(),
        timestamp: UNIX_EPOCH + Duration::from_millis(SENT_AT_MS),
        owner: None,
        opt_change: None,
    }
}

fn page(limit: u32, after: Option<String>) -> Page<String> {
    Page { limit, after }
}

/// Panics unless `time` is within a minute of now (stores keep milliseconds, perhaps from
/// another clock).
fn assert_recent(time: SystemTime, what: &str) {
    let now = SystemTime::now();
    let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(60), "{what}: {time:?} is not about now ({now:?})");
}

async fn insert(store: &Arc<dyn MessageStore>, message: &OutboundMessage, owner: Option<&str>) {
    let inserted =
        ok(store.insert_for(message, Meta { owner, status_callback: None }, None).await, "insert_for");
    assert_eq!(inserted, Inserted::New, "inserting {}", message.id);
}

async fn receive(store: &Arc<dyn MessageStore>, message: &InboundMessage) -> Received {
    ok(store.insert_inbound(message).await, "insert_inbound")
}

/// The conversation a stored message belongs to.
async fn conversation_of(store: &Arc<dyn MessageStore>, id: &str) -> i64 {
    let view = ok(store.get(id).await, "get");
    let view = view.unwrap_or_else(|| panic!("message {id} is not stored"));
    view.conversation_id.unwrap_or_else(|| panic!("message {id} belongs to no conversation"))
}

/// Every conversation `viewer` sees, walking pages of `limit`; checks the cursors on the way.
async fn all_conversations(
    store: &Arc<dyn MessageStore>,
    viewer: Option<&str>,
    limit: u32,
) -> Vec<ConversationView> {
    let mut all: Vec<ConversationView> = Vec::new();
    let mut after = None;
    loop {
        let listed = ok(store.conversations(viewer, page(limit, after)).await, "conversations");
        assert!(listed.items.len() <= limit as usize, "a page of {limit} held {}", listed.items.len());
        all.extend(listed.items.iter().cloned());
        match listed.next {
            Some(next) => {
                let last = listed.items.last().map(|c| c.last_message_id.clone());
                assert_eq!(Some(next.clone()), last, "next is the page's last last_message_id");
                after = Some(next);
            }
            None => break,
        }
        assert!(all.len() < 1_000_000, "conversation paging does not end");
    }
    let ids: HashSet<i64> = all.iter().map(|c| c.id).collect();
    assert_eq!(
        ids.len(),
        all.len(),
        "a conversation listed twice: {:?}",
        all.iter().map(|c| c.id).collect::<Vec<_>>()
    );
    all
}

/// The ids of a conversation's messages on one page, and the page's cursor.
async fn message_page(
    store: &Arc<dyn MessageStore>,
    conversation: i64,
    viewer: Option<&str>,
    limit: u32,
    after: Option<&str>,
) -> (Vec<String>, Option<String>) {
    let listed = ok(
        store.conversation_messages(conversation, viewer, page(limit, after.map(str::to_owned))).await,
        "conversation_messages",
    );
    let listed = listed.unwrap_or_else(|| panic!("conversation {conversation} is not shown to {viewer:?}"));
    (listed.items.into_iter().map(|m| m.id).collect(), listed.next)
}

/// SMS and MMS between two numbers, either way and however formatted, are one conversation;
/// email between two addresses another, created later, so with a greater id.
pub(crate) async fn outbound_joins_conversations(store: &Arc<dyn MessageStore>) {
    let owner = new_owner();
    let (p, e) = (phones(2), emails(2));
    let m1 = outbound(Channel::SMS, &p[0], &p[1], "first");
    let m2 = outbound(Channel::MMS, &formatted(&p[1]), &p[0], "second");
    let m3 = outbound(Channel::EMAIL, &e[0], &e[1], "hello");
    let m4 = outbound(Channel::EMAIL, &e[1].to_uppercase(), &e[0], &"é".repeat(150));
    for message in [&m1, &m2, &m3, &m4] {
        insert(store, message, Some(&owner)).await;
    }
    let phone = conversation_of(store, &m1.id).await;
    let email = conversation_of(store, &m3.id).await;
    assert_eq!(conversation_of(store, &m2.id).await, phone, "B→A by MMS joins A→B by SMS");
    assert_eq!(conversation_of(store, &m4.id).await, email, "B→A by email joins A→B by email");
    assert!(0 < phone && phone < email, "conversation ids in order of creation: {phone}, {email}");
    let view = ok(store.get(&m1.id).await, "get").map(|v| v.direction);
    assert_eq!(view, Some(Direction::Outbound), "an accepted message is outbound");

    let listed = ok(store.conversations(Some(&owner), page(10, None)).await, "conversations");
    assert_eq!(listed.next, None, "one page holds them");
    for view in &listed.items {
        assert_recent(view.last_message_at, "last_message_at");
    }
    let expected =
        |id, channel: &str, participants: [&String; 2], last: &OutboundMessage, at| ConversationView {
            id,
            channel: channel.to_owned(),
            participants: participants.map(String::clone),
            message_count: 2,
            last_message_at: at,
            last_message: Some(LastMessage {
                id: last.id.clone(),
                direction: Direction::Outbound,
                body_preview: preview(&last.body),
            }),
            last_message_id: last.id.clone(),
        };
    let at = |i: usize| listed.items.get(i).map_or(UNIX_EPOCH, |c| c.last_message_at);
    assert_eq!(
        listed.items,
        [
            expected(email, "email", [&e[0], &e[1]], &m4, at(0)),
            expected(phone, "sms", [&p[0], &p[1]], &m2, at(1))
        ],
        "newest activity first"
    );
}

/// An idempotent replay or a reused key stores nothing and touches no conversation.
pub(crate) async fn keyed_insert_counts_once(store: &Arc<dyn MessageStore>) {
    let owner = new_owner();
    let p = phones(2);
    let key = IdempotencyKey { key: format!("conformance-{}", new_id()), request_hash: "h1".into() };
    let reused = IdempotencyKey { key: key.key.clone(), request_hash: "h2".into() };
    let first = outbound(Channel::SMS, &p[0], &p[1], "once");
    let again = outbound(Channel::SMS, &p[0], &p[1], "once");
    let other = outbound(Channel::SMS, &p[0], &p[1], "other");
    let replay = Inserted::Replay { id: first.id.clone(), channel: "sms".into() };
    let cases =
        [(&first, &key, Inserted::New), (&again, &key, replay), (&other, &reused, Inserted::KeyReused)];
    for (message, key, expected) in cases {
        let answer = ok(store.insert_for(message, Meta::owned_by(&owner), Some(key)).await, "insert_for");
        assert_eq!(answer, expected, "{} with key hash {}", message.body, key.request_hash);
    }
    for id in [&again.id, &other.id] {
        assert!(ok(store.get(id).await, "get").is_none(), "a replay or reused key stored {id}");
    }
    let listed = all_conversations(store, Some(&owner), 10).await;
    let seen: Vec<(u64, Option<String>)> =
        listed.iter().map(|c| (c.message_count, c.last_message.as_ref().map(|m| m.id.clone()))).collect();
    assert_eq!(seen, [(1, Some(first.id.clone()))], "the conversation counts the message once");
    let conversation = conversation_of(store, &first.id).await;
    assert_eq!(message_page(store, conversation, None, 10, None).await, (vec![first.id], None));
}

/// An inbound message joins the conversation of the messages sent to its sender; a redelivery
/// (same family and provider id) answers the first one and stores nothing; another family's
/// message with the same provider id is another message. Inbound messages are never queued.
pub(crate) async fn inbound_and_redelivery(store: &Arc<dyn MessageStore>) {
    let owner = new_owner();
    let p = phones(2);
    let provider_id = format!("SM{}", new_id());
    let sent = outbound(Channel::SMS, &p[0], &p[1], "hi there");
    insert(store, &sent, None).await;
    let conversation = conversation_of(store, &sent.id).await;

    let mut reply = inbound(Channel::MMS, &formatted(&p[1]), &p[0], "a reply", &provider_id);
    reply.owner = Some(owner.clone());
    let first =
        Received { id: reply.id.clone(), conversation_id: conversation, duplicate: false, opted_out: false };
    assert_eq!(receive(store, &reply).await, first, "a new inbound message");
    let view =
        ok(store.get(&reply.id).await, "get").unwrap_or_else(|| panic!("inbound {} not stored", reply.id));
    let shown = (view.direction, view.status, view.conversation_id, view.provider_message_id.as_deref());
    assert_eq!(shown, (Direction::Inbound, Status::Received, Some(conversation), Some(provider_id.as_str())));
    assert_eq!(
        (view.provider.as_deref(), view.tags.len(), view.attempts.len()),
        (Some("conformance-provider"), 0, 0)
    );

    let mut redelivered = inbound(Channel::SMS, &p[1], &p[0], "a reply", &provider_id);
    redelivered.owner = Some(new_owner());
    let duplicate = Received { duplicate: true, ..first.clone() };
    assert_eq!(receive(store, &redelivered).await, duplicate, "a redelivery");
    assert!(ok(store.get(&redelivered.id).await, "get").is_none(), "a redelivery stored a message");

    let listed = ok(store.conversation_messages(conversation, None, page(10, None)).await, "messages");
    let listed = listed.unwrap_or_else(|| panic!("conversation {conversation} not found"));
    let created_at = listed.items.get(1).map_or(UNIX_EPOCH, |m| m.created_at);
    assert_recent(created_at, "an inbound message's created_at");
    let expected = ConversationMessage {
        id: reply.id.clone(),
        direction: Direction::Inbound,
        channel: Channel::MMS,
        from: reply.from.clone(),
        to: reply.to.clone(),
        body: reply.body.clone(),
        attachments: reply.attachments.clone(),
        status: Status::Received,
        provider: Some(Arc::from("conformance-provider")),
        timestamp: reply.timestamp,
        created_at,
    };
    let ids: Vec<&str> = listed.items.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [sent.id.as_str(), reply.id.as_str()], "the conversation holds both, oldest first");
    assert_eq!(listed.items.get(1), Some(&expected), "the inbound message as the conversation shows it");

    // Posting an inbound message grants its key no view of the conversation (only sending does).
    let seen = all_conversations(store, Some(&owner), 10).await;
    assert!(
        seen.is_empty(),
        "the key that posted an inbound message does not see its conversation: {seen:?}"
    );
    let listed = all_conversations(store, None, 1000).await;
    let shown = listed.into_iter().find(|c| c.id == conversation).map(|c| (c.message_count, c.last_message));
    let last =
        LastMessage { id: reply.id.clone(), direction: Direction::Inbound, body_preview: "a reply".into() };
    assert_eq!(shown, Some((2, Some(last))), "the conversation as the list shows it");

    let e = emails(2);
    let email = inbound(Channel::EMAIL, &e[0], &e[1], "<p>mail</p>", &provider_id);
    let received = receive(store, &email).await;
    assert_eq!((received.id.as_str(), received.duplicate), (email.id.as_str(), false), "another family");
    assert_ne!(received.conversation_id, conversation);

    let due = ok(store.due(None, 100_000).await, "due");
    let pending = ok(store.pending().await, "pending");
    for id in [&reply.id, &email.id] {
        assert!(!due.iter().any(|p| &p.id == id), "inbound {id} is due");
        assert!(!pending.iter().any(|p| &p.message.id == id), "inbound {id} is pending");
    }
}

/// Deliveries of one message at once store it once; every answer names it.
pub(crate) async fn concurrent_redeliveries(store: &Arc<dyn MessageStore>) {
    let p = phones(2);
    let provider_id = format!("SM{}", new_id());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, message) =
                (Arc::clone(store), inbound(Channel::SMS, &p[1], &p[0], "hi", &provider_id));
            tokio::spawn(async move { (message.id.clone(), store.insert_inbound(&message).await) })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        let (id, answer) = task.await.unwrap_or_else(|e| panic!("a delivery task failed: {e}"));
        answers.push((id, ok(answer, "concurrent insert_inbound")));
    }
    let stored: Vec<&Received> = answers.iter().map(|(_, r)| r).filter(|r| !r.duplicate).collect();
    assert_eq!(stored.len(), 1, "exactly one delivery stores: {answers:?}");
    let winner = stored[0].clone();
    for (id, answer) in &answers {
        assert_eq!((&answer.id, answer.conversation_id), (&winner.id, winner.conversation_id), "{answers:?}");
        let kept = ok(store.get(id).await, "get").is_some();
        assert_eq!(kept, *id == winner.id, "message {id} stored: {kept}");
    }
    let (ids, _) = message_page(store, winner.conversation_id, None, 10, None).await;
    assert_eq!(ids, std::slice::from_ref(&winner.id), "the conversation holds the message once");
}

/// STOP records an opt-out of the sender from the number it wrote to (once); START removes it.
pub(crate) async fn opt_out_changes(store: &Arc<dyn MessageStore>) {
    let p = phones(2);
    let (ours, theirs) = (&p[0], &p[1]);
    let key = OptOutKey::of("sms", ours, theirs);
    let opted_out = |key: OptOutKey| async move { ok(store.opted_out(&key).await, "opted_out") };
    assert!(!opted_out(key.clone()).await, "not opted out yet");

    let stop = |body: &str, change| {
        let mut message = inbound(Channel::SMS, theirs, ours, body, &format!("SM{}", new_id()));
        message.opt_change = Some(change);
        message
    };
    let first = stop(" stop ", OptChange::OptOut);
    let received = receive(store, &first).await;
    assert_eq!((received.duplicate, received.opted_out), (false, true), "the first STOP opts out");
    assert!(opted_out(key.clone()).await, "opted out after STOP");
    assert!(opted_out(OptOutKey::of("mms", &formatted(ours), theirs)).await, "MMS shares the opt-out");
    assert!(!opted_out(OptOutKey::of("sms", theirs, ours)).await, "the other direction is not opted out");
    assert!(!opted_out(OptOutKey::of("email", ours, theirs)).await, "another family is not opted out");

    let second = receive(store, &stop("STOP", OptChange::OptOut)).await;
    assert_eq!(
        (second.duplicate, second.opted_out),
        (false, false),
        "a second STOP is stored, records nothing"
    );
    assert!(opted_out(key.clone()).await, "still opted out");

    let start = receive(store, &stop("START", OptChange::OptIn)).await;
    assert_eq!((start.duplicate, start.opted_out), (false, false), "START");
    assert!(!opted_out(key).await, "START removes the opt-out");
    let (ids, next) = message_page(store, received.conversation_id, None, 10, None).await;
    assert_eq!((ids.len(), next), (3, None), "every STOP and START is stored in the conversation");
}

/// Opt-outs are listed by (channel, sender, recipient) in pages; one can be removed once.
pub(crate) async fn opt_out_listing(store: &Arc<dyn MessageStore>) {
    let p = phones(6);
    let sender = &p[0];
    let keys: Vec<OptOutKey> =
        p[1..].iter().map(|recipient| OptOutKey::of("sms", sender, recipient)).collect();
    for recipient in &p[1..] {
        let mut stop = inbound(Channel::SMS, recipient, sender, "STOP", &format!("SM{}", new_id()));
        stop.opt_change = Some(OptChange::OptOut);
        assert!(receive(store, &stop).await.opted_out, "STOP from {recipient}");
    }
    let listed = |after: Option<OptOutKey>, limit| async move {
        ok(store.opt_outs(Page { limit, after }).await, "opt_outs")
    };
    let keys_of =
        |listed: &Listed<OptOut, OptOutKey>| listed.items.iter().map(OptOut::key).collect::<Vec<_>>();
    let start = OptOutKey { family: "sms".into(), sender: sender.clone(), recipient: String::new() };

    let first = listed(Some(start.clone()), 2).await;
    assert_eq!((keys_of(&first), first.next.clone()), (keys[0..2].to_vec(), Some(keys[1].clone())), "page 1");
    for opt_out in &first.items {
        assert_recent(opt_out.created_at, "an opt-out's created_at");
    }
    let second = listed(first.next, 2).await;
    assert_eq!(
        (keys_of(&second), second.next.clone()),
        (keys[2..4].to_vec(), Some(keys[3].clone())),
        "page 2"
    );
    let third = listed(second.next, 2).await;
    assert_eq!(keys_of(&third).first(), Some(&keys[4]), "page 3");
    if third.items.len() == 1 {
        assert_eq!(third.next, None, "a short page is the last");
    }

    // The whole list, from the start: ours in a row, nothing twice, and an end.
    let mut all: Vec<OptOutKey> = Vec::new();
    let mut after = None;
    loop {
        let page = listed(after, 2).await;
        all.extend(keys_of(&page));
        match page.next {
            Some(next) => {
                assert_eq!(all.last(), Some(&next), "next is the page's last key");
                after = Some(next);
            }
            None => break,
        }
        assert!(all.len() < 1_000_000, "opt-out paging does not end");
    }
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len(), "an opt-out listed twice");
    let at = all.iter().position(|k| k == &keys[0]).unwrap_or_else(|| panic!("{:?} not listed", keys[0]));
    assert_eq!(all.get(at..at + 5), Some(&keys[..]), "ours in order");

    assert!(ok(store.remove_opt_out(&keys[2]).await, "remove_opt_out"), "removing an opt-out");
    assert!(!ok(store.remove_opt_out(&keys[2]).await, "remove_opt_out"), "removing it again");
    assert!(!ok(store.opted_out(&keys[2]).await, "opted_out"), "a removed opt-out");
    assert!(ok(store.opted_out(&keys[1]).await, "opted_out"), "another opt-out stays");
    let rest = listed(Some(start), 4).await;
    let expected = [&keys[0], &keys[1], &keys[3], &keys[4]].map(OptOutKey::clone);
    assert_eq!(keys_of(&rest), expected, "the list without the removed one");
}

/// Conversations come newest activity first, in pages that neither repeat nor skip.
pub(crate) async fn conversation_paging(store: &Arc<dyn MessageStore>) {
    let owner = new_owner();
    let p = phones(6);
    let mut ids = Vec::new();
    for to in &p[1..] {
        let message = outbound(Channel::SMS, &p[0], to, "hello");
        insert(store, &message, Some(&owner)).await;
        ids.push(conversation_of(store, &message.id).await);
    }
    // New activity moves the second conversation to the front.
    let again = outbound(Channel::SMS, &p[2], &p[0], "again");
    insert(store, &again, Some(&owner)).await;
    let expected = [ids[1], ids[4], ids[3], ids[2], ids[0]];

    let mut pages = Vec::new();
    let mut after = None;
    for _ in 0..3 {
        let listed = ok(store.conversations(Some(&owner), page(2, after.clone())).await, "conversations");
        let cursor = listed.items.last().map(|c| c.last_message_id.clone());
        pages.push((listed.items.iter().map(|c| c.id).collect::<Vec<_>>(), listed.next.is_some()));
        if listed.next.is_some() {
            assert_eq!(listed.next, cursor, "next is the last item's last_message_id");
        }
        after = listed.next;
    }
    let want = vec![
        (expected[..2].to_vec(), true),
        (expected[2..4].to_vec(), true),
        (expected[4..].to_vec(), false),
    ];
    assert_eq!(pages, want, "pages of 2, newest activity first");
    let first = all_conversations(store, Some(&owner), 10).await;
    assert_eq!(
        first.first().map(|c| c.last_message_id.clone()),
        Some(again.id.clone()),
        "the cursor is the newest id"
    );
    let exact = ok(store.conversations(Some(&owner), page(5, None)).await, "conversations");
    assert_eq!((exact.items.len(), exact.next), (5, None), "a page that holds the rest exactly is the last");

    // Everything, as an unrestricted viewer pages through it: ours in the same order.
    let all: Vec<i64> = all_conversations(store, None, 2).await.into_iter().map(|c| c.id).collect();
    let ours: Vec<i64> = all.into_iter().filter(|id| expected.contains(id)).collect();
    assert_eq!(ours, expected, "every conversation once, newest activity first");
}

/// A key sees the conversations holding a message it owns, and nothing of the others.
pub(crate) async fn viewer_filtering(store: &Arc<dyn MessageStore>) {
    let (a, b, nobody) = (new_owner(), new_owner(), new_owner());
    let p = phones(4);
    let by_a = outbound(Channel::SMS, &p[0], &p[1], "from a");
    let by_b = outbound(Channel::SMS, &p[0], &p[2], "from b");
    insert(store, &by_a, Some(&a)).await;
    insert(store, &by_b, Some(&b)).await;
    let unowned = inbound(Channel::SMS, &p[3], &p[0], "nobody's", &format!("SM{}", new_id()));
    let unowned_conversation = receive(store, &unowned).await.conversation_id;
    // A key that posts an inbound message into a conversation is not shown it: only sending
    // grants a view (else any key could read any pair's messages by posting a webhook).
    let mut posted = inbound(Channel::SMS, &p[3], &p[0], "posted by nobody", &format!("SM{}", new_id()));
    posted.owner = Some(nobody.clone());
    receive(store, &posted).await;
    // b writes in a's conversation too.
    let b_in_a = outbound(Channel::SMS, &p[1], &p[0], "b joins");
    insert(store, &b_in_a, Some(&b)).await;
    let (shared, own) = (conversation_of(store, &by_a.id).await, conversation_of(store, &by_b.id).await);

    let seen = |viewer: String| async move {
        all_conversations(store, Some(&viewer), 10).await.into_iter().map(|c| c.id).collect::<Vec<_>>()
    };
    assert_eq!(seen(a.clone()).await, [shared], "a sees its conversation only");
    assert_eq!(seen(b.clone()).await, [shared, own], "b sees both it wrote in");
    assert_eq!(seen(nobody.clone()).await, Vec::<i64>::new(), "a key with no message sees none");

    let visible = |id: i64, viewer: Option<String>| async move {
        let listed = ok(store.conversation_messages(id, viewer.as_deref(), page(10, None)).await, "messages");
        listed.map(|l| l.items.len())
    };
    let cases = [
        (shared, Some(a.clone()), Some(2)),
        (shared, Some(b.clone()), Some(2)),
        (own, Some(a.clone()), None),
        (own, Some(b.clone()), Some(1)),
        (unowned_conversation, Some(a.clone()), None),
        (unowned_conversation, Some(nobody.clone()), None),
        (unowned_conversation, None, Some(2)),
        (own, None, Some(1)),
    ];
    for (id, viewer, expected) in cases {
        assert_eq!(visible(id, viewer.clone()).await, expected, "conversation {id} read by {viewer:?}");
    }
}

/// A conversation's messages come oldest first, in pages; an unknown conversation is `None`.
pub(crate) async fn conversation_messages_paging(store: &Arc<dyn MessageStore>) {
    let p = phones(2);
    let o0 = outbound(Channel::SMS, &p[0], &p[1], "m0");
    insert(store, &o0, None).await;
    let i1 = inbound(Channel::MMS, &p[1], &p[0], "m1", &format!("SM{}", new_id()));
    receive(store, &i1).await;
    let o2 = outbound(Channel::MMS, &p[0], &p[1], "m2");
    insert(store, &o2, None).await;
    let i3 = inbound(Channel::SMS, &p[1], &p[0], "m3", &format!("SM{}", new_id()));
    receive(store, &i3).await;
    let o4 = outbound(Channel::SMS, &formatted(&p[0]), &p[1], "m4");
    insert(store, &o4, None).await;
    let conversation = conversation_of(store, &o0.id).await;
    let ids = [&o0.id, &i1.id, &o2.id, &i3.id, &o4.id].map(String::clone);

    // (limit, after the message at, the messages at, next: the message at)
    let cases = [
        (2, None, 0..2, Some(1)),
        (2, Some(1), 2..4, Some(3)),
        (2, Some(3), 4..5, None),
        (5, None, 0..5, None),
        (10, None, 0..5, None),
        (3, Some(0), 1..4, Some(3)),
        (2, Some(4), 5..5, None),
    ];
    for (limit, after, expected, next) in cases {
        let after = after.map(|i: usize| ids[i].as_str());
        let got = message_page(store, conversation, None, limit, after).await;
        let want = (ids[expected].to_vec(), next.map(|i: usize| ids[i].clone()));
        assert_eq!(got, want, "limit {limit} after {after:?}");
    }

    let listed = ok(store.conversation_messages(conversation, None, page(10, None)).await, "messages");
    let listed = listed.unwrap_or_else(|| panic!("conversation {conversation} not found"));
    let shown = listed.items.last().cloned();
    let created_at = shown.as_ref().map_or(UNIX_EPOCH, |m| m.created_at);
    assert_recent(created_at, "an outbound message's created_at");
    let expected = ConversationMessage {
        id: o4.id.clone(),
        direction: Direction::Outbound,
        channel: Channel::SMS,
        from: o4.from.clone(),
        to: o4.to.clone(),
        body: o4.body.clone(),
        attachments: o4.attachments.clone(),
        status: Status::Queued,
        provider: None,
        timestamp: created_at,
        created_at,
    };
    assert_eq!(shown, Some(expected), "an outbound message as the conversation shows it");
    let directions: Vec<Direction> = listed.items.iter().map(|m| m.direction).collect();
    use Direction::{Inbound, Outbound};
    assert_eq!(directions, [Outbound, Inbound, Outbound, Inbound, Outbound]);

    for unknown in [i64::MAX, 0, -1] {
        let listed = ok(store.conversation_messages(unknown, None, page(10, None)).await, "messages");
        assert!(listed.is_none(), "conversation {unknown} does not exist");
    }
}

/// An outbound message shows its current status in its conversation.
pub(crate) async fn outbound_status_shown(store: &Arc<dyn MessageStore>) {
    let p = phones(2);
    let sent = outbound(Channel::SMS, &p[0], &p[1], "to be sent");
    let failed = outbound(Channel::SMS, &p[0], &p[1], "to fail");
    insert(store, &sent, None).await;
    insert(store, &failed, None).await;
    let conversation = conversation_of(store, &sent.id).await;
    let shown = || async move {
        let listed = ok(store.conversation_messages(conversation, None, page(10, None)).await, "messages");
        let listed = listed.unwrap_or_else(|| panic!("conversation {conversation} not found"));
        listed
            .items
            .into_iter()
            .map(|m| (m.status, m.provider.as_deref().map(str::to_owned)))
            .collect::<Vec<_>>()
    };
    assert_eq!(shown().await, [(Status::Queued, None), (Status::Queued, None)], "accepted");
    ok(store.attempt_started(&sent.id, 1, "conformance-provider").await, "attempt_started");
    assert_eq!(shown().await, [(Status::Sending, None), (Status::Queued, None)], "an attempt started");
    let outcome =
        Final::Sent { provider: Arc::from("conformance-provider"), provider_message_id: Some("x".into()) };
    ok(store.finish(&sent.id, outcome, None).await, "finish");
    let failure = Failure { code: FailureCode::OptedOut, message: "opted out".into() };
    ok(store.finish(&failed.id, Final::Failed { provider: None, failure }, None).await, "finish");
    let provider = Some("conformance-provider".to_owned());
    assert_eq!(shown().await, [(Status::Sent, provider), (Status::Failed, None)], "finished");
}

/// A receipt from `provider` naming the provider's id for a message.
fn receipt(provider: &str, provider_id: &str, status: Option<DeliveryStatus>, event: &str) -> ReceiptRecord {
    ReceiptRecord {
        provider: provider.to_owned(),
        message_id: None,
        provider_message_id: Some(provider_id.to_owned()),
        event: event.to_owned(),
        status,
        time: SystemTime::now(),
        suppress: None,
        detail: serde_json::Map::from_iter([("raw".to_owned(), serde_json::json!(event))]),
    }
}

/// A message sent by provider `tw` as `provider_id`, with a callback URL.
async fn sent_with_callback(store: &Arc<dyn MessageStore>, provider_id: &str) -> String {
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let message = outbound(Channel::SMS, &from, &to, "hi");
    let meta = Meta { owner: None, status_callback: Some("https://example.com/cb") };
    ok(store.insert_for(&message, meta, None).await, "insert");
    ok(store.attempt_started(&message.id, 1, "tw").await, "attempt_started");
    let sent = Final::Sent { provider: Arc::from("tw"), provider_message_id: Some(provider_id.to_owned()) };
    ok(store.finish(&message.id, sent, None).await, "finish");
    message.id
}

/// Receipts out of order and duplicated: the delivery status only moves forward, every receipt
/// is an event; receipts for unknown ids, or from another provider, match nothing.
pub(crate) async fn receipts_move_delivery_status_forward(store: &Arc<dyn MessageStore>) {
    let provider_id = format!("SM{}", uuid::Uuid::now_v7().simple());
    let id = sent_with_callback(store, &provider_id).await;
    let before = ok(store.get(&id).await, "get").unwrap_or_else(|| panic!("stored"));
    assert_eq!(before.delivery_status, None);
    assert_eq!(before.status_callback.as_deref(), Some("https://example.com/cb"));
    let kinds: Vec<&str> = before.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["queued", "sent"], "Switchboard's own events");
    let receipts = [
        receipt("tw", &provider_id, Some(DeliveryStatus::Delivered), "delivered"),
        receipt("tw", &provider_id, Some(DeliveryStatus::Sent), "sent"),
        receipt("tw", &provider_id, None, "queued"),
        receipt("tw", &provider_id, Some(DeliveryStatus::Delivered), "delivered"),
        receipt("tw", "SM-unknown", Some(DeliveryStatus::Delivered), "delivered"),
        receipt("other", &provider_id, Some(DeliveryStatus::Undelivered), "undelivered"),
    ];
    let applied = ok(store.record_receipts(&receipts).await, "record_receipts");
    let recorded = |moved| ReceiptApplied::Recorded { message_id: id.clone(), moved };
    assert_eq!(
        applied,
        [
            recorded(true),
            recorded(false),
            recorded(false),
            recorded(false),
            ReceiptApplied::Unknown,
            ReceiptApplied::Unknown
        ]
    );
    // By our own id (SendGrid's custom_args), from the provider that sent it only.
    let mut by_id = receipt("tw", "no-such-provider-id", Some(DeliveryStatus::Read), "read");
    by_id.message_id = Some(id.clone());
    let mut elsewhere = by_id.clone();
    elsewhere.provider = "other".into();
    let applied = ok(store.record_receipts(&[elsewhere, by_id]).await, "record_receipts");
    assert_eq!(applied, [ReceiptApplied::Unknown, recorded(true)]);
    let view = ok(store.get(&id).await, "get").unwrap_or_else(|| panic!("stored"));
    assert_eq!(view.delivery_status, Some(DeliveryStatus::Read));
    let provider_events: Vec<(&str, Option<&str>)> = view
        .events
        .iter()
        .filter(|e| e.source == Source::Provider)
        .map(|e| (e.kind.as_str(), e.provider.as_deref()))
        .collect();
    let tw = Some("tw");
    assert_eq!(
        provider_events,
        [("delivered", tw), ("sent", tw), ("queued", tw), ("delivered", tw), ("read", tw)]
    );
    let detail = view.events.iter().find(|e| e.source == Source::Provider).map(|e| e.detail.clone());
    assert_eq!(detail, Some(serde_json::json!({"raw": "delivered"})));
    let times: Vec<SystemTime> = view.events.iter().map(|e| e.time).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");
}

/// A message's callbacks: one per change of status or delivery status, its oldest only due,
/// the next once it is done; a retry waits for its time; a message without a URL queues none.
pub(crate) async fn callbacks_go_out_in_order(store: &Arc<dyn MessageStore>) {
    // Whatever earlier checks queued goes first.
    loop {
        let due = ok(store.due_callbacks(100).await, "due_callbacks");
        if due.is_empty() {
            break;
        }
        for job in due {
            ok(store.callback_done(job.id).await, "callback_done");
        }
    }
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let quiet = outbound(Channel::SMS, &from, &to, "no callback");
    insert(store, &quiet, None).await;
    ok(store.attempt_started(&quiet.id, 1, "tw").await, "attempt_started");
    let provider_id = format!("SM{}", uuid::Uuid::now_v7().simple());
    let id = sent_with_callback(store, &provider_id).await;
    let delivered = receipt("tw", &provider_id, Some(DeliveryStatus::Delivered), "delivered");
    ok(store.record_receipts(&[delivered]).await, "record_receipts");
    let mut told = Vec::new();
    let mut webhook_ids = HashSet::new();
    for round in 0..5 {
        let due = ok(store.due_callbacks(100).await, "due_callbacks");
        assert!(due.len() <= 1, "round {round}: one message, one callback at a time: {due:?}");
        let Some(job) = due.into_iter().next() else { break };
        assert_eq!((job.message_id.as_str(), job.url.as_str()), (id.as_str(), "https://example.com/cb"));
        assert!(webhook_ids.insert(job.webhook_id.clone()), "webhook ids differ per change");
        assert!(ok(store.due_callbacks(100).await, "due_callbacks").is_empty(), "leased: not due again");
        if told.is_empty() {
            // The first delivery fails once: retried later, then again now.
            let later = SystemTime::now() + Duration::from_secs(3600);
            ok(store.callback_retry(job.id, 1, later).await, "callback_retry");
            assert!(ok(store.due_callbacks(100).await, "due_callbacks").is_empty(), "waits for its time");
            ok(store.callback_retry(job.id, 2, SystemTime::now()).await, "callback_retry");
            let again = ok(store.due_callbacks(100).await, "due_callbacks");
            assert_eq!(
                again.iter().map(|j| (j.id, j.attempts, j.webhook_id.clone())).collect::<Vec<_>>(),
                [(job.id, 2, job.webhook_id.clone())]
            );
        }
        told.push((job.status, job.delivery_status));
        ok(store.callback_done(job.id).await, "callback_done");
    }
    assert_eq!(
        told,
        [(Status::Sending, None), (Status::Sent, None), (Status::Sent, Some(DeliveryStatus::Delivered))]
    );
}

/// A suppression (a bounce's) blocks its address from every sender and is listed with the
/// opt-outs under the sender `*` — recorded only when the receipt matched a message of its
/// provider (another provider, or an unknown message, suppresses nothing).
pub(crate) async fn suppressions_block_every_sender(store: &Arc<dyn MessageStore>) {
    let [to, other, stranger] =
        <[String; 3]>::try_from(emails(3)).unwrap_or_else(|_| panic!("three addresses"));
    let message = outbound(Channel::EMAIL, "news@example.com", &to, "hi");
    insert(store, &message, None).await;
    let provider_id = format!("sg-{}", uuid::Uuid::now_v7().simple());
    let sent = Final::Sent { provider: Arc::from("sg"), provider_message_id: Some(provider_id.clone()) };
    ok(store.finish(&message.id, sent, None).await, "finish");
    let bounce = |provider: &str, provider_id: &str, address: &str| {
        let mut bounce = receipt(provider, provider_id, Some(DeliveryStatus::Bounced), "bounced");
        bounce.suppress = Some(OptOutKey::suppression("email", address));
        bounce
    };
    let strays = [bounce("sg", "unknown-message", &stranger), bounce("other", &provider_id, &other)];
    let applied = ok(store.record_receipts(&strays).await, "record_receipts");
    assert_eq!(applied, [ReceiptApplied::Unknown, ReceiptApplied::Unknown]);
    let real = bounce("sg", &provider_id, &to.to_uppercase());
    let applied = ok(store.record_receipts(&[real.clone(), real]).await, "record_receipts");
    let recorded = |moved| ReceiptApplied::Recorded { message_id: message.id.clone(), moved };
    assert_eq!(applied, [recorded(true), recorded(false)]);
    let senders = ["a@example.com", "b@example.com"];
    assert_eq!(
        ok(blocked(store.as_ref(), "email", &senders, &to).await, "blocked"),
        Some(Blocked::Suppressed)
    );
    for address in [&other, &stranger] {
        assert_eq!(
            ok(blocked(store.as_ref(), "email", &senders, address).await, "blocked"),
            None,
            "{address}"
        );
    }
    assert_eq!(
        ok(blocked(store.as_ref(), "sms", &senders, &to).await, "blocked"),
        None,
        "per channel family"
    );
    let listed = ok(store.opt_outs(Page { limit: 200, after: None }).await, "opt_outs");
    let mut all = listed.items;
    let mut next = listed.next;
    while let Some(after) = next {
        let more = ok(store.opt_outs(Page { limit: 200, after: Some(after) }).await, "opt_outs");
        all.extend(more.items);
        next = more.next;
    }
    let entries: Vec<(&str, &str)> = all
        .iter()
        .filter(|o| [&to, &other, &stranger].contains(&&o.recipient))
        .map(|o| (o.channel.as_str(), o.sender.as_str()))
        .collect();
    assert_eq!(entries, [("email", "*")]);
    assert!(ok(store.remove_opt_out(&OptOutKey::suppression("email", &to)).await, "remove_opt_out"));
    assert_eq!(ok(blocked(store.as_ref(), "email", &senders, &to).await, "blocked"), None);
}

/// Replayed receipts keep at most [`MAX_EVENTS`] provider events per message, and still move
/// its delivery status.
pub(crate) async fn events_are_capped(store: &Arc<dyn MessageStore>) {
    let provider_id = format!("SM{}", uuid::Uuid::now_v7().simple());
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let message = outbound(Channel::SMS, &from, &to, "hi");
    insert(store, &message, None).await;
    let sent = Final::Sent { provider: Arc::from("tw"), provider_message_id: Some(provider_id.clone()) };
    ok(store.finish(&message.id, sent, None).await, "finish");
    let replays: Vec<ReceiptRecord> = (0..MAX_EVENTS + 5)
        .map(|_| receipt("tw", &provider_id, Some(DeliveryStatus::Sent), "sent"))
        .collect();
    ok(store.record_receipts(&replays).await, "record_receipts");
    let late = receipt("tw", &provider_id, Some(DeliveryStatus::Delivered), "delivered");
    ok(store.record_receipts(&[late]).await, "record_receipts");
    let view = ok(store.get(&message.id).await, "get").unwrap_or_else(|| panic!("stored"));
    let provider_events = view.events.iter().filter(|e| e.source == Source::Provider).count();
    assert_eq!(provider_events, MAX_EVENTS);
    assert_eq!(view.delivery_status, Some(DeliveryStatus::Delivered));
}

/// A receipt naming our id that arrives while its provider's attempt is under way (Twilio calls
/// back before the send's answer is recorded) finds the message; one from a provider that did not
/// try it does not.
pub(crate) async fn receipts_before_the_answer(store: &Arc<dyn MessageStore>) {
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let message = outbound(Channel::SMS, &from, &to, "hi");
    insert(store, &message, None).await;
    ok(store.attempt_started(&message.id, 1, "tw").await, "attempt_started");
    let by_id = |provider: &str| {
        let mut early =
            receipt(provider, "SM-not-recorded-yet", Some(DeliveryStatus::Delivered), "delivered");
        early.message_id = Some(message.id.clone());
        early
    };
    let applied = ok(store.record_receipts(&[by_id("other"), by_id("tw")]).await, "record_receipts");
    assert_eq!(
        applied,
        [ReceiptApplied::Unknown, ReceiptApplied::Recorded { message_id: message.id.clone(), moved: true }]
    );
    let sent =
        Final::Sent { provider: Arc::from("tw"), provider_message_id: Some("SM-not-recorded-yet".into()) };
    ok(store.finish(&message.id, sent, None).await, "finish");
    let view = ok(store.get(&message.id).await, "get").unwrap_or_else(|| panic!("stored"));
    assert_eq!((view.status, view.delivery_status), (Status::Sent, Some(DeliveryStatus::Delivered)));
}

/// Every page of a search reading at most `scan_limit` rows a page, following the cursors (at
/// most 1,000 pages): each page's messages.
async fn search_pages(
    store: &Arc<dyn MessageStore>,
    filter: &MessageFilter,
    limit: u32,
    scan_limit: usize,
) -> Vec<Vec<MessageView>> {
    let mut pages = Vec::new();
    let mut after: Option<SearchPosition> = None;
    for _ in 0..1_000 {
        let page = Page { limit, after: after.take() };
        let listed = ok(store.search_bounded(filter, page, scan_limit).await, "search");
        assert!(listed.items.len() <= limit as usize, "a page holds at most its limit");
        pages.push(listed.items);
        match listed.next {
            Some(next) => after = Some(next),
            None => return pages,
        }
    }
    panic!("more than 1,000 pages")
}

/// Every page of a search, following the cursors.
async fn search_all(store: &Arc<dyn MessageStore>, filter: &MessageFilter, limit: u32) -> Vec<MessageView> {
    search_pages(store, filter, limit, SEARCH_SCAN_LIMIT).await.into_iter().flatten().collect()
}

fn ids(views: &[MessageView]) -> Vec<&str> {
    views.iter().map(|v| v.id.as_str()).collect()
}

/// A failed message: one attempt by `provider`, then failed with `attempts_exhausted`.
async fn failed(store: &Arc<dyn MessageStore>, message: &OutboundMessage, meta: Meta<'_>, provider: &str) {
    ok(store.insert_for(message, meta, None).await, "insert_for");
    ok(store.attempt_started(&message.id, 1, provider).await, "attempt_started");
    let attempt = super::Attempt {
        provider: Arc::from(provider),
        outcome: super::Outcome::Error,
        error_class: Some(switchboard_providers::ErrorClass::NotSent),
        error_code: Some("503".to_owned()),
        error_message: Some("unavailable".to_owned()),
        // Shorter than the test takes: the attempt starts after the message was stored.
        latency_ms: 0,
        time: SystemTime::now(),
    };
    let failure =
        Failure { code: FailureCode::AttemptsExhausted, message: "gave up after 1 attempts".to_owned() };
    let end = Final::Failed { provider: Some(Arc::from(provider)), failure };
    ok(store.finish(&message.id, end, Some((1, attempt))).await, "finish");
}

/// Each filter of a search alone and together, newest first, within the caller's messages or
/// (`owner: None`) everyone's.
pub(crate) async fn search_filters(store: &Arc<dyn MessageStore>) {
    let (owner, other) = (new_owner(), new_owner());
    let phones = phones(3);
    let email = emails(1).remove(0).replace("c0-", "Mixed.Case-");
    let (provider_a, provider_b) = (format!("a-{}", new_id()), format!("b-{}", new_id()));
    let provider_id = format!("SM{}", uuid::Uuid::now_v7().simple());
    // Oldest first: sent (and delivered), failed, queued, sending; another key's last.
    let sent = outbound(Channel::SMS, "+15550009999", &phones[0], "sent");
    insert(store, &sent, Some(&owner)).await;
    ok(store.attempt_started(&sent.id, 1, &provider_a).await, "attempt_started");
    let end = Final::Sent {
        provider: Arc::from(provider_a.as_str()),
        provider_message_id: Some(provider_id.clone()),
    };
    ok(store.finish(&sent.id, end, None).await, "finish");
    let delivered = receipt(&provider_a, &provider_id, Some(DeliveryStatus::Delivered), "delivered");
    ok(store.record_receipts(&[delivered]).await, "record_receipts");
    let mail = outbound(Channel::EMAIL, "news@example.com", &email, "failed");
    failed(store, &mail, Meta::owned_by(&owner), &provider_b).await;
    let queued = outbound(Channel::SMS, "+15550009999", &phones[1], "queued");
    insert(store, &queued, Some(&owner)).await;
    let sending = outbound(Channel::MMS, "+15550009999", &phones[1], "sending");
    insert(store, &sending, Some(&owner)).await;
    ok(store.attempt_started(&sending.id, 1, &provider_a).await, "attempt_started");
    let theirs = outbound(Channel::SMS, "+15550009999", &phones[0], "theirs");
    insert(store, &theirs, Some(&other)).await;

    let mine = MessageFilter { owner: Some(owner.clone()), ..MessageFilter::default() };
    let everyone = search_all(store, &mine, 2).await;
    // Newest first: by creation time (milliseconds), then id.
    let mut expected = [&sent, &mail, &queued, &sending];
    let created = |id: &str| everyone.iter().find(|v| v.id == id).map(SearchPosition::of);
    expected.sort_by_key(|m| std::cmp::Reverse(created(&m.id)));
    let expected: Vec<&str> = expected.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids(&everyone), expected, "the key's own messages, newest first");
    let shown = ok(store.get(&sent.id).await, "get").unwrap_or_else(|| panic!("stored"));
    assert_eq!(everyone.iter().find(|v| v.id == sent.id), Some(&shown), "shown as get shows it");

    let check = |filter: MessageFilter, want: Vec<&str>, what: &'static str| {
        let store = Arc::clone(store);
        let want: Vec<String> = want.into_iter().map(str::to_owned).collect();
        async move {
            let got = search_all(&store, &filter, 3).await;
            let mut want = want;
            want.sort_by_key(|id| {
                std::cmp::Reverse(got.iter().find(|v| &v.id == id).map(SearchPosition::of))
            });
            assert_eq!(ids(&got), want, "{what}: {filter:?}");
            // Read 5 rows at most a page: the same messages, over more pages.
            let bounded: Vec<MessageView> =
                search_pages(&store, &filter, 3, 5).await.into_iter().flatten().collect();
            assert_eq!(ids(&bounded), want, "{what}, 5 rows read a page: {filter:?}");
        }
    };
    let with = |f: fn(&mut MessageFilter)| {
        let mut filter = mine.clone();
        f(&mut filter);
        filter
    };
    check(with(|f| f.status = Some(Status::Sent)), vec![&sent.id], "status sent").await;
    check(with(|f| f.status = Some(Status::Failed)), vec![&mail.id], "status failed").await;
    check(with(|f| f.status = Some(Status::Queued)), vec![&queued.id], "status queued").await;
    check(with(|f| f.status = Some(Status::Sending)), vec![&sending.id], "status sending").await;
    check(with(|f| f.status = Some(Status::Received)), vec![], "status received").await;
    check(with(|f| f.delivery_status = Some(DeliveryStatus::Delivered)), vec![&sent.id], "delivered").await;
    check(with(|f| f.delivery_status = Some(DeliveryStatus::Bounced)), vec![], "bounced").await;
    check(with(|f| f.channel = Some("email".into())), vec![&mail.id], "channel email").await;
    check(with(|f| f.channel = Some("sms".into())), vec![&sent.id, &queued.id], "channel sms (not mms)")
        .await;
    let mut by_provider = mine.clone();
    by_provider.provider = Some(provider_a.clone());
    check(by_provider, vec![&sent.id], "provider (the one that handled it)").await;
    let mut by_phone = mine.clone();
    by_phone.to = Some(recipient_key(None, &formatted(&phones[1])));
    check(by_phone.clone(), vec![&queued.id, &sending.id], "to, formatted").await;
    by_phone.channel = Some("mms".into());
    check(by_phone, vec![&sending.id], "to and channel").await;
    let mut by_email = mine.clone();
    by_email.to = Some(recipient_key(None, &email.to_uppercase()));
    check(by_email, vec![&mail.id], "to, email in another case").await;
    let mut unknown = mine.clone();
    unknown.to = Some(recipient_key(None, &phones[2]));
    check(unknown, vec![], "to, nobody").await;
    let theirs_too = MessageFilter { to: Some(phones[0].clone()), ..MessageFilter::default() };
    check(theirs_too, vec![&sent.id, &theirs.id], "every key's (admin)").await;
    let other_key = MessageFilter { owner: Some(other.clone()), ..MessageFilter::default() };
    check(other_key, vec![&theirs.id], "another key's own").await;
    // Times: `since` from a message's creation on, `until` before one's.
    let at = |id: &str| created(id).map(|p| p.created_at).unwrap_or_else(|| panic!("listed"));
    let mut since = mine.clone();
    since.since = Some(at(&queued.id));
    let want: Vec<&str> = expected.iter().copied().filter(|id| at(id) >= at(&queued.id)).collect();
    assert!(
        want.contains(&queued.id.as_str()) && !want.contains(&sent.id.as_str())
            || at(&sent.id) == at(&queued.id)
    );
    check(since.clone(), want, "since (inclusive)").await;
    since.until = Some(at(&sending.id));
    let want: Vec<&str> =
        expected.iter().copied().filter(|id| at(id) >= at(&queued.id) && at(id) < at(&sending.id)).collect();
    check(since, want, "since and until (exclusive)").await;
}

/// A page reads at most its scan limit of rows of its driving range (`search::Driving`), the
/// other filters tested on them: a combination matching few of them ends pages short or empty,
/// each with the cursor of the last row read, and following the cursors lists exactly the
/// matching messages, once each, newest first. One filter alone pages as without a limit.
pub(crate) async fn search_pages_stop_at_the_scan_limit(store: &Arc<dyn MessageStore>) {
    let owner = new_owner();
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let mail = emails(1).remove(0);
    // 30 messages, oldest first: emails 3, 17 and 18, the rest SMS to `to`; 5 and 25 sending.
    let mut sent = Vec::new();
    for i in 0..30 {
        let message = match i {
            3 | 17 | 18 => outbound(Channel::EMAIL, "news@example.com", &mail, &format!("m{i}")),
            _ => outbound(Channel::SMS, &from, &to, &format!("m{i}")),
        };
        insert(store, &message, Some(&owner)).await;
        if i == 5 || i == 25 {
            ok(store.attempt_started(&message.id, 1, "tw").await, "attempt_started");
        }
        sent.push(message.id);
    }
    let id = |i: usize| sent[i].as_str();
    let page_ids = |pages: &[Vec<MessageView>]| -> Vec<Vec<String>> {
        pages.iter().map(|page| page.iter().map(|v| v.id.clone()).collect()).collect()
    };
    let mine = MessageFilter { owner: Some(owner.clone()), ..MessageFilter::default() };
    let newest_first: Vec<&str> = (0..30).rev().map(id).collect();
    assert_eq!(ids(&search_all(store, &mine, 50).await), newest_first, "stored in order");

    // The key's 30 messages drive, 7 read a page: [29..23] none, [22..16] 18 and 17, [15..9]
    // none, [8..2] 3, [1, 0] none and the end.
    let mut email = mine.clone();
    email.channel = Some("email".into());
    let pages = search_pages(store, &email, 2, 7).await;
    let want: Vec<Vec<&str>> = vec![vec![], vec![id(18), id(17)], vec![], vec![id(3)], vec![]];
    assert_eq!(page_ids(&pages), want, "pages stop after 7 rows read");
    // Read without a bound below the key's 30: full pages.
    let pages = search_pages(store, &email, 2, SEARCH_SCAN_LIMIT).await;
    assert_eq!(page_ids(&pages), vec![vec![id(18), id(17)], vec![id(3)]], "not cut short");
    // A scan limit below the page is taken as the page: still every match once, in order.
    let pages = search_pages(store, &email, 2, 1).await;
    assert_eq!(pages.len(), 11, "3 rows read a page");
    let all: Vec<MessageView> = pages.into_iter().flatten().collect();
    assert_eq!(ids(&all), [id(18), id(17), id(3)]);

    // The recipient drives (27 SMS), the status (SQLite: read from the attempts) is tested on them.
    let sending = MessageFilter { to: Some(to.clone()), status: Some(Status::Sending), ..mine.clone() };
    let pages = search_pages(store, &sending, 2, 7).await;
    assert_eq!(page_ids(&pages), vec![vec![id(25)], vec![], vec![], vec![id(5)]], "to + sending");
    // The status drives (every key's messages in it), the key is tested on them.
    let queued = MessageFilter { status: Some(Status::Queued), ..mine.clone() };
    let want: Vec<&str> = newest_first.iter().copied().filter(|m| *m != id(25) && *m != id(5)).collect();
    let all: Vec<MessageView> = search_pages(store, &queued, 4, 7).await.into_iter().flatten().collect();
    assert_eq!(ids(&all), want, "owner + queued");
    let sending = MessageFilter { status: Some(Status::Sending), ..mine.clone() };
    let all: Vec<MessageView> = search_pages(store, &sending, 4, 7).await.into_iter().flatten().collect();
    assert_eq!(ids(&all), [id(25), id(5)], "owner + sending");

    // One filter alone, or one with the time window: every row read matches, pages as unbounded.
    let since = ok(store.get(id(4)).await, "get").map(|v| SearchPosition::of(&v).created_at);
    for filter in [
        mine.clone(),
        MessageFilter { to: Some(to.clone()), ..MessageFilter::default() },
        MessageFilter { since, ..mine.clone() },
    ] {
        let bounded = search_pages(store, &filter, 4, 7).await;
        let unbounded = search_pages(store, &filter, 4, SEARCH_SCAN_LIMIT).await;
        assert_eq!(page_ids(&bounded), page_ids(&unbounded), "{filter:?}");
        assert!(bounded.iter().rev().skip(1).all(|page| page.len() == 4), "full pages: {filter:?}");
    }
}

/// Paging through more than two pages while messages are inserted: every message stored before
/// the first page is listed exactly once.
pub(crate) async fn search_pages_under_concurrent_inserts(store: &Arc<dyn MessageStore>) {
    let owner = new_owner();
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let mut before = Vec::new();
    for i in 0..23 {
        let message = outbound(Channel::SMS, &from, &to, &format!("m{i}"));
        insert(store, &message, Some(&owner)).await;
        before.push(message.id);
    }
    let filter = MessageFilter { owner: Some(owner.clone()), ..MessageFilter::default() };
    let writer = {
        let (store, owner, from, to) = (Arc::clone(store), owner.clone(), from.clone(), to.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                let message = outbound(Channel::SMS, &from, &to, &format!("late{i}"));
                insert(&store, &message, Some(&owner)).await;
                tokio::task::yield_now().await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut after: Option<SearchPosition> = None;
    let mut pages = 0;
    loop {
        let listed = ok(store.search(&filter, Page { limit: 5, after: after.take() }).await, "search");
        pages += 1;
        seen.extend(listed.items.iter().map(|v| (SearchPosition::of(v), v.id.clone())));
        // Inserts keep landing before the pages read so far.
        let late = outbound(Channel::SMS, &from, &to, "between pages");
        insert(store, &late, Some(&owner)).await;
        match listed.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    ok(writer.await.map_err(super::codec::unavailable), "writer");
    assert!(pages > 2, "{pages} pages");
    let unique: HashSet<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(unique.len(), seen.len(), "no message listed twice");
    for id in &before {
        assert!(unique.contains(id.as_str()), "{id} was skipped");
    }
    assert!(seen.windows(2).all(|w| w[0].0 > w[1].0), "strictly newest first");
}

/// A failed message retried: queued again with its record kept, an event, a fresh budget (its
/// next attempt numbered after the earlier ones), a callback; then sent. Anything but `failed`
/// is not retryable.
pub(crate) async fn retry_gives_a_failed_message_a_fresh_start(store: &Arc<dyn MessageStore>) {
    drain_callbacks(store).await;
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let message = outbound(Channel::SMS, &from, &to, "try again");
    let meta = Meta { owner: None, status_callback: Some("https://example.com/cb") };
    failed(store, &message, meta, "tw").await;
    let told = drain_callbacks(store).await;
    assert_eq!(told, [Status::Sending, Status::Failed]);
    assert_eq!(ok(store.retry(&message.id, None).await, "retry"), Retried::Queued);
    let view = ok(store.get(&message.id).await, "get").unwrap_or_else(|| panic!("stored"));
    assert_eq!((view.status, &view.error, &view.provider), (Status::Queued, &None, &None));
    assert_eq!(view.attempts.len(), 1, "earlier attempts stay");
    let retried: Vec<_> = view.events.iter().filter(|e| e.kind == RETRIED_EVENT).collect();
    assert_eq!(retried.len(), 1, "{:?}", view.events);
    assert_eq!(retried[0].source, Source::Switchboard);
    assert_eq!(retried[0].detail["code"], "attempts_exhausted");
    assert_eq!(drain_callbacks(store).await, [Status::Queued]);
    let queued =
        MessageFilter { status: Some(Status::Queued), to: Some(to.clone()), ..MessageFilter::default() };
    assert_eq!(ids(&search_all(store, &queued, 10).await), [message.id.as_str()], "found as queued");
    assert_eq!(ok(store.retry(&message.id, None).await, "retry"), Retried::NotRetryable(Status::Queued));
    // A dispatcher takes it up with its attempts so far, not counted against the budget.
    assert!(ok(store.claim(&message.id).await, "claim"), "due and held by nobody");
    let pending = ok(store.pending_of(std::slice::from_ref(&message.id)).await, "pending_of");
    assert_eq!(
        pending.iter().map(|p| (p.attempts, p.retried_after, p.round)).collect::<Vec<_>>(),
        [(1, 1, 0)]
    );
    assert_eq!(pending[0].message.body, "try again");
    ok(store.attempt_started(&message.id, 2, "tw").await, "attempt_started");
    let sending = ok(store.get(&message.id).await, "get").map(|v| v.status);
    assert_eq!(sending, Some(Status::Sending));
    let attempt = super::Attempt {
        provider: Arc::from("tw"),
        outcome: super::Outcome::Success,
        error_class: None,
        error_code: None,
        error_message: None,
        latency_ms: 1,
        time: SystemTime::now(),
    };
    let sent = Final::Sent { provider: Arc::from("tw"), provider_message_id: None };
    ok(store.finish(&message.id, sent, Some((2, attempt))).await, "finish");
    assert_eq!(drain_callbacks(store).await, [Status::Sending, Status::Sent]);
    let view = ok(store.get(&message.id).await, "get").unwrap_or_else(|| panic!("stored"));
    assert_eq!((view.status, view.attempts.len()), (Status::Sent, 2));
    let kinds: Vec<&str> = view.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["queued", "sending", RETRIED_EVENT, "sent"]);
    assert_eq!(ok(store.retry(&message.id, None).await, "retry"), Retried::NotRetryable(Status::Sent));
    assert_eq!(ok(store.retry(&new_id(), None).await, "retry"), Retried::NotFound);
    assert_eq!(ok(store.retry("not-an-id", None).await, "retry"), Retried::NotFound);
    let inbound = receive(store, &inbound(Channel::SMS, &to, &from, "hi", &new_id())).await;
    assert_eq!(ok(store.retry(&inbound.id, None).await, "retry"), Retried::NotRetryable(Status::Received));
}

/// The statuses of the callbacks due now, delivered (whatever earlier checks left, too).
async fn drain_callbacks(store: &Arc<dyn MessageStore>) -> Vec<Status> {
    let mut told = Vec::new();
    loop {
        let due = ok(store.due_callbacks(100).await, "due_callbacks");
        if due.is_empty() {
            return told;
        }
        for job in due {
            told.push(job.status);
            ok(store.callback_done(job.id).await, "callback_done");
        }
    }
}

/// A retry with an `Idempotency-Key`: the same again is a replay (even once the message moved
/// on), another request with the key is refused, and a refused retry does not keep its key.
pub(crate) async fn retry_idempotency(store: &Arc<dyn MessageStore>) {
    let key = |key: &str, hash: &str| IdempotencyKey { key: key.to_owned(), request_hash: hash.to_owned() };
    let (k1, k2) = (format!("retry-{}", new_id()), format!("retry-{}", new_id()));
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let first = outbound(Channel::SMS, &from, &to, "one");
    failed(store, &first, Meta::default(), "tw").await;
    assert_eq!(ok(store.retry(&first.id, Some(&key(&k1, "h1"))).await, "retry"), Retried::Queued);
    assert_eq!(ok(store.retry(&first.id, Some(&key(&k1, "h1"))).await, "retry"), Retried::Replay);
    assert_eq!(ok(store.retry(&first.id, Some(&key(&k1, "h2"))).await, "retry"), Retried::KeyReused);
    let view = ok(store.get(&first.id).await, "get").unwrap_or_else(|| panic!("stored"));
    assert_eq!(view.events.iter().filter(|e| e.kind == RETRIED_EVENT).count(), 1, "retried once");
    // Refused (queued, not failed): the key is not kept.
    assert_eq!(
        ok(store.retry(&first.id, Some(&key(&k2, "h3"))).await, "retry"),
        Retried::NotRetryable(Status::Queued)
    );
    let second = outbound(Channel::SMS, &from, &to, "two");
    failed(store, &second, Meta::default(), "tw").await;
    assert_eq!(ok(store.retry(&second.id, Some(&key(&k2, "h4"))).await, "retry"), Retried::Queued);
    // Sends and retries share the keys.
    let third = outbound(Channel::SMS, &from, &to, "three");
    let inserted = ok(store.insert_for(&third, Meta::default(), Some(&key(&k2, "h5"))).await, "insert_for");
    assert_eq!(inserted, Inserted::KeyReused);
}

/// `views` shows each stored message of a list exactly as `get` does (attempts and receipts'
/// events included, each message's own), and leaves out ids not stored.
pub(crate) async fn views_read_many_as_get_reads_one(store: &Arc<dyn MessageStore>) {
    let provider_id = format!("SM{}", uuid::Uuid::now_v7().simple());
    let with_history = sent_with_callback(store, &provider_id).await;
    let receipts = [receipt("tw", &provider_id, Some(DeliveryStatus::Delivered), "delivered")];
    ok(store.record_receipts(&receipts).await, "record_receipts");
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let queued = outbound(Channel::SMS, &from, &to, "queued");
    insert(store, &queued, Some("views-owner")).await;
    let ids = [with_history.clone(), new_id(), queued.id.clone(), with_history.clone()];
    let mut views = ok(store.views(&ids).await, "views");
    views.sort_by(|a, b| a.id.cmp(&b.id));
    views.dedup_by(|a, b| a.id == b.id);
    let mut expected = Vec::new();
    for id in [&with_history, &queued.id] {
        expected.push(ok(store.get(id).await, "get").unwrap_or_else(|| panic!("{id} stored")));
    }
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(views, expected, "views of {ids:?}");
    let history = expected.iter().find(|view| view.id == with_history).map(|view| view.events.len());
    assert!(history.is_some_and(|events| events >= 3), "the events came along: {history:?}");
    assert_eq!(ok(store.views(&[]).await, "views of none"), Vec::new());
    assert_eq!(ok(store.views(&[new_id()]).await, "views of unknown"), Vec::new());
}

/// What a client names may hold a NUL (`%00`), which PostgreSQL text cannot: such an id or
/// filter matches nothing, as any other unknown one, rather than failing the store.
pub(crate) async fn names_holding_nul_match_nothing(store: &Arc<dyn MessageStore>) {
    let [from, to] = <[String; 2]>::try_from(phones(2)).unwrap_or_else(|_| panic!("two phones"));
    let message = outbound(Channel::SMS, &from, &to, "nul");
    insert(store, &message, None).await;
    let odd = format!("{}\0", message.id);
    assert_eq!(ok(store.get(&odd).await, "get"), None);
    let views = ok(store.views(&[odd.clone(), message.id.clone()]).await, "views");
    assert_eq!(ids(&views), [message.id.as_str()]);
    assert_eq!(ok(store.retry(&odd, None).await, "retry"), Retried::NotFound);
    for filter in [
        MessageFilter { provider: Some("tw\0".into()), ..MessageFilter::default() },
        MessageFilter { to: Some(format!("{to}\0")), ..MessageFilter::default() },
        MessageFilter { channel: Some("sms\0".into()), ..MessageFilter::default() },
    ] {
        let listed = ok(store.search(&filter, Page { limit: 10, after: None }).await, "search");
        assert_eq!((listed.items.len(), listed.next), (0, None), "{filter:?}");
    }
}
