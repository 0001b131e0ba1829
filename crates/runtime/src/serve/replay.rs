//! Effectively-once answers: a request that comes again (a DUP redelivery after a
//! reconnect, a client's retry with the same correlation data, a fleet retry that lands
//! on the member that already answered) is answered from what was sent the first time
//! instead of being computed again.
//!
//! A request is known by its reply topic, its correlation data (or, for MQTT 3.1.1
//! clients, its JSON `id`) and its service ([`RequestKey`]). [`Replay`] remembers the
//! answers of recent requests, bounded in entries and bytes (oldest forgotten first), and
//! which requests are being computed now, so that a copy arriving meanwhile waits for the
//! original's answer rather than queueing a second computation. Bookkeeping only: nothing
//! here publishes, acknowledges or computes.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::mqtt::envelope::Request;

/// A request's identity as its client gave it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    service: String,
    reply_topic: String,
    token: Token,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Token {
    /// MQTT v5 correlation data.
    Correlation(Bytes),
    /// The JSON `id` of a 3.1.1 request, as its canonical JSON text.
    Id(String),
}

impl RequestKey {
    /// The key of a request that can be told apart from others; `None` for one without
    /// a reply topic or without correlation data and `id` (each such request is new).
    pub fn of(request: &Request) -> Option<RequestKey> {
        let reply = request.reply.as_ref()?;
        let token = match (&reply.correlation, &reply.id) {
            (Some(correlation), _) => Token::Correlation(correlation.clone()),
            (None, Some(id)) => Token::Id(id.to_string()),
            (None, None) => return None,
        };
        Some(RequestKey {
            service: request.service.clone(),
            reply_topic: reply.topic.clone(),
            token,
        })
    }

    /// What the key costs to keep, besides the answer.
    fn bytes(&self) -> usize {
        let token = match &self.token {
            Token::Correlation(c) => c.len(),
            Token::Id(id) => id.len(),
        };
        self.service.len() + self.reply_topic.len() + token
    }
}

/// How many answers are kept, and how many bytes they may take in all.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayLimits {
    pub entries: usize,
    pub bytes: usize,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        // A client retries within seconds; 256 answers cover far more than that at the
        // request rates a small device serves, and 4 MiB holds about 40 generated images.
        ReplayLimits {
            entries: 256,
            bytes: 4 << 20,
        }
    }
}

/// Copies of a request in flight beyond this many are let go at once rather than kept
/// waiting (each holds its PUBLISH); the original's answer still reaches the client.
pub const MAX_WAITING_COPIES: usize = 8;

/// What to do with a request that just arrived.
#[derive(Debug, PartialEq)]
pub enum Admission<A, W> {
    /// Not seen recently: compute it (it is now in flight).
    New,
    /// Answered before: send this again.
    Replay(A),
    /// Being computed now: the copy was added to the original's waiters.
    Joined,
    /// Being computed now, and already waited for by [`MAX_WAITING_COPIES`] copies: the
    /// copy is handed back to be acknowledged at once.
    Surplus(W),
}

/// Recent answers of type `A` and the copies of in-flight requests, of type `W`, that
/// wait for them.
pub struct Replay<A, W> {
    limits: ReplayLimits,
    answers: HashMap<RequestKey, (A, usize)>,
    /// Keys of `answers`, oldest first.
    order: VecDeque<RequestKey>,
    bytes: usize,
    in_flight: HashMap<RequestKey, Vec<W>>,
}

impl<A: Clone, W> Replay<A, W> {
    pub fn new(limits: ReplayLimits) -> Replay<A, W> {
        Replay {
            limits,
            answers: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            in_flight: HashMap::new(),
        }
    }

    /// Takes a request with `key`; `copy` is what must be kept if it joins an original
    /// in flight (its PUBLISH, to acknowledge once the answer is out).
    pub fn admit(&mut self, key: &RequestKey, copy: W) -> Admission<A, W> {
        if let Some((answer, _)) = self.answers.get(key) {
            return Admission::Replay(answer.clone());
        }
        match self.in_flight.get_mut(key) {
            Some(waiting) if waiting.len() >= MAX_WAITING_COPIES => Admission::Surplus(copy),
            Some(waiting) => {
                waiting.push(copy);
                Admission::Joined
            }
            None => {
                self.in_flight.insert(key.clone(), Vec::new());
                Admission::New
            }
        }
    }

    /// The request with `key` was answered: keeps `answer` (with the bytes it takes) if
    /// given, and hands back the copies that waited for it.
    pub fn complete(&mut self, key: &RequestKey, answer: Option<(A, usize)>) -> Vec<W> {
        let waiting = self.in_flight.remove(key).unwrap_or_default();
        if let Some((answer, size)) = answer {
            self.remember(key.clone(), answer, size + key.bytes());
        }
        waiting
    }

    fn remember(&mut self, key: RequestKey, answer: A, size: usize) {
        if size > self.limits.bytes || self.limits.entries == 0 {
            return;
        }
        if let Some((_, old)) = self.answers.insert(key.clone(), (answer, size)) {
            // Answered twice (a copy that arrived after the first answer was forgotten):
            // the newer answer replaces the older in place.
            self.bytes -= old;
            self.order.retain(|k| *k != key);
        }
        self.bytes += size;
        self.order.push_back(key);
        while self.answers.len() > self.limits.entries || self.bytes > self.limits.bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, size)) = self.answers.remove(&oldest) {
                self.bytes -= size;
            }
        }
    }

    /// Answers kept now, and the bytes they take.
    pub fn usage(&self) -> (usize, usize) {
        (self.answers.len(), self.bytes)
    }

    pub fn limits(&self) -> ReplayLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(correlation: &str) -> RequestKey {
        RequestKey {
            service: "ocr".into(),
            reply_topic: "me/replies".into(),
            token: Token::Correlation(Bytes::copy_from_slice(correlation.as_bytes())),
        }
    }

    #[test]
    fn a_request_is_computed_once_and_then_replayed() {
        let mut replay: Replay<&str, u32> = Replay::new(ReplayLimits::default());
        assert_eq!(replay.admit(&key("a"), 1), Admission::New);
        assert_eq!(replay.admit(&key("a"), 2), Admission::Joined);
        assert_eq!(replay.admit(&key("a"), 3), Admission::Joined);
        assert_eq!(replay.complete(&key("a"), Some(("answer", 6))), vec![2, 3]);
        assert_eq!(replay.admit(&key("a"), 4), Admission::Replay("answer"));
        assert_eq!(replay.admit(&key("b"), 5), Admission::New);
        // "me/replies" + "ocr" + "a" + the answer's 6 bytes.
        assert_eq!(replay.usage(), (1, 10 + 3 + 1 + 6));
    }

    #[test]
    fn an_answer_not_kept_lets_the_next_copy_compute_again() {
        let mut replay: Replay<&str, u32> = Replay::new(ReplayLimits::default());
        assert_eq!(replay.admit(&key("a"), 1), Admission::New);
        assert_eq!(replay.complete(&key("a"), None), Vec::<u32>::new());
        assert_eq!(replay.admit(&key("a"), 2), Admission::New);
        assert_eq!(replay.usage(), (0, 0));
    }

    #[test]
    fn copies_beyond_the_bound_are_handed_back() {
        let mut replay: Replay<&str, u32> = Replay::new(ReplayLimits::default());
        assert_eq!(replay.admit(&key("a"), 0), Admission::New);
        for copy in 1..=MAX_WAITING_COPIES as u32 {
            assert_eq!(replay.admit(&key("a"), copy), Admission::Joined);
        }
        assert_eq!(replay.admit(&key("a"), 99), Admission::Surplus(99));
        assert_eq!(replay.complete(&key("a"), None).len(), MAX_WAITING_COPIES);
    }

    #[test]
    fn the_oldest_answers_go_first_when_entries_or_bytes_run_out() {
        let limits = ReplayLimits {
            entries: 2,
            bytes: 1000,
        };
        let mut replay: Replay<u32, ()> = Replay::new(limits);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            replay.admit(&key(name), ());
            replay.complete(&key(name), Some((i as u32, 100)));
        }
        assert_eq!(replay.admit(&key("a"), ()), Admission::New, "a was evicted");
        assert_eq!(replay.admit(&key("b"), ()), Admission::Replay(1));
        assert_eq!(replay.admit(&key("c"), ()), Admission::Replay(2));
        assert_eq!(replay.usage(), (2, 2 * (100 + 14)));

        let limits = ReplayLimits {
            entries: 100,
            bytes: 300,
        };
        let mut replay: Replay<u32, ()> = Replay::new(limits);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            replay.complete(&key(name), Some((i as u32, 100)));
        }
        // 3 x 114 bytes do not fit in 300: the oldest went.
        assert_eq!(replay.usage(), (2, 228));
        assert_eq!(replay.admit(&key("a"), ()), Admission::New);
        // An answer bigger than the whole budget is never kept.
        replay.complete(&key("big"), Some((9, 400)));
        assert_eq!(replay.admit(&key("big"), ()), Admission::New);
    }

    #[test]
    fn keys_tell_services_reply_topics_and_ids_apart() {
        use crate::mqtt::envelope::Reply;
        use std::time::Instant;
        let request = |service: &str, topic: &str, correlation: Option<&str>, id| Request {
            service: service.into(),
            content_type: None,
            body: crate::services::Payload::Raw(Bytes::new()),
            reply: Some(Reply {
                topic: topic.into(),
                correlation: correlation.map(|c| Bytes::copy_from_slice(c.as_bytes())),
                id,
                in_body: false,
            }),
            received_at: Instant::now(),
            expires_at: None,
            steering: Ok(Default::default()),
        };
        let a = RequestKey::of(&request("ocr", "me/r", Some("1"), None)).unwrap();
        assert_eq!(a, key_with("ocr", "me/r", "1"));
        assert_ne!(
            a,
            RequestKey::of(&request("legal", "me/r", Some("1"), None)).unwrap()
        );
        assert_ne!(
            a,
            RequestKey::of(&request("ocr", "me/s", Some("1"), None)).unwrap()
        );
        let by_id = RequestKey::of(&request("ocr", "me/r", None, Some(serde_json::json!(7))));
        assert_eq!(by_id.unwrap().token, Token::Id("7".into()));
        assert_eq!(RequestKey::of(&request("ocr", "me/r", None, None)), None);
        let mut no_reply = request("ocr", "me/r", Some("1"), None);
        no_reply.reply = None;
        assert_eq!(RequestKey::of(&no_reply), None);
    }

    fn key_with(service: &str, topic: &str, correlation: &str) -> RequestKey {
        RequestKey {
            service: service.into(),
            reply_topic: topic.into(),
            token: Token::Correlation(Bytes::copy_from_slice(correlation.as_bytes())),
        }
    }
}
