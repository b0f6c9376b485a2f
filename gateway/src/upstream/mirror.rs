//! Mirroring: local topics sent to the upstream broker as they are,
//! bridge-style (Mosquitto's `topic sensors/# out 1 "" site1/`).
//!
//! A `[[upstream.mirror]]` rule names local topic filters and a prefix. A
//! message on a matching topic becomes one buffer record of kind
//! [`KIND_MIRROR`] whose stream is the upstream topic (`prefix` + the local
//! topic, mapped once, when it is accepted) and whose payload is the
//! message's bytes. It takes the same way into the buffer as a message on
//! `forward_topics` ([`super::capture`]): a client's QoS 1/2 message is
//! acknowledged only once its record is committed. Delivery reads it in
//! `seq` order with the rest and publishes it alone, at QoS 1, to that
//! topic with the raw payload ([`pack`]); a PUBACK deletes it. So a
//! mirrored topic's messages arrive in order, at least once, across an
//! outage or a restart of perch.
//!
//! perch's upstream client speaks MQTT 3.1.1 (rumqttc's v4 client), which
//! has no user properties: a mirrored message carries no record id. After
//! a reconnect or a crash a receiver may see a message twice, in order; to
//! drop duplicates it needs something in the payload (a sensor's sequence
//! number or timestamp), or the enveloped `forward_topics`, whose records
//! carry the id `<gateway>-<seq>`.

use std::collections::VecDeque;

use serde::Deserialize;

use super::Message;
use crate::buffer::{BufferError, Intake, RecordRef, KIND_MIRROR};
use crate::kit::durable::Ticket;
use crate::kit::topic;
use crate::kit::Problem;

/// `[[upstream.mirror]]`: one mirroring rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRule {
    /// Local topic filters whose messages are mirrored, e.g.
    /// `["sensors/#"]`. Required, at least one.
    pub topics: Vec<String>,
    /// Put in front of the local topic to make the upstream topic, as it
    /// is (include the trailing `/`: `"site1/"` sends `sensors/x` to
    /// `site1/sensors/x`). Empty (the default) keeps the topic. No
    /// wildcards, and not starting with `$`.
    #[serde(default)]
    pub prefix: String,
}

/// Checks `[[upstream.mirror]]`; `http` says whether `[upstream.http]` is
/// set, which cannot carry raw MQTT messages.
pub(super) fn validate(rules: &[MirrorRule], http: bool, problems: &mut Vec<Problem>) {
    if http && !rules.is_empty() {
        problems.push(Problem::new(
            "upstream.mirror",
            "mirroring publishes raw MQTT messages and needs [upstream.mqtt], but \
             [upstream.http] is set: remove the [[upstream.mirror]] rules, or list the \
             topics in upstream.forward_topics to send them as CloudEvents",
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        if rule.topics.is_empty() {
            problems.push(Problem::new(
                format!("upstream.mirror[{i}].topics"),
                "is empty: list the local topic filters to mirror, e.g. topics = [\"sensors/#\"]",
            ));
        }
        for (j, f) in rule.topics.iter().enumerate() {
            if let Err(e) = topic::validate_filter(f) {
                problems.push(Problem::new(
                    format!("upstream.mirror[{i}].topics[{j}]"),
                    format!("{f:?} is not a valid MQTT topic filter: it {e}"),
                ));
            }
        }
        let p = &rule.prefix;
        if p.contains(['+', '#', '\0']) || p.starts_with('$') {
            problems.push(Problem::new(
                format!("upstream.mirror[{i}].prefix"),
                format!(
                    "{p:?} cannot start an upstream topic: it must not contain '+', '#' or \
                     NUL nor start with '$' (e.g. prefix = \"site1/\")"
                ),
            ));
        }
    }
}

/// Whether `filter`, from `forward_topics` or a mirror rule, captures a
/// message on `topic`. As MQTT keeps topics starting with `$` out of
/// filters starting with a wildcard (MQTT-4.7.2-1), the gateway's own
/// namespace stays out of them too: a topic under `perch/` (deploy bundles,
/// control requests and replies, statuses, function logs) is captured only
/// by a filter that names `perch/` itself, never by `#` or `+/...`.
pub fn captures(filter: &str, topic: &str) -> bool {
    let wildcard_first = filter.starts_with('#') || filter.starts_with('+');
    !(wildcard_first && topic.starts_with("perch/")) && topic::matches(filter, topic)
}

fn captures_any(filters: &[String], topic: &str) -> bool {
    filters.iter().any(|f| captures(f, topic))
}

/// Where the messages on forwarded and mirrored topics go: the buffer, as
/// enveloped records (`forward_topics`), as mirrored messages
/// (`[[upstream.mirror]]`), or both.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    forward: Vec<String>,
    mirror: Vec<MirrorRule>,
}

impl Routes {
    pub fn new(forward: &[String], mirror: &[MirrorRule]) -> Routes {
        Routes {
            forward: forward.to_vec(),
            mirror: mirror.to_vec(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.forward.is_empty() && self.mirror.iter().all(|r| r.topics.is_empty())
    }

    /// Every filter to capture, each once, forwarded ones first.
    pub fn filters(&self) -> Vec<String> {
        let mut all = self.forward.clone();
        for f in self.mirror.iter().flat_map(|r| &r.topics) {
            if !all.contains(f) {
                all.push(f.clone());
            }
        }
        all
    }

    /// Whether a message on `topic` goes upstream at all.
    pub fn keeps(&self, topic: &str) -> bool {
        captures_any(&self.forward, topic) || self.mirror_rule(topic).is_some()
    }

    /// The first mirror rule one of whose filters matches `topic`.
    fn mirror_rule(&self, topic: &str) -> Option<&MirrorRule> {
        self.mirror.iter().find(|r| captures_any(&r.topics, topic))
    }

    /// Hands one message to the buffer as what its topic asks for. With a
    /// `ticket` (a client waits for the commit) it goes with the last of
    /// the records, which commits with or after the first. Ok when there
    /// is nothing to do.
    pub fn keep(
        &self,
        intake: &Intake,
        topic: &str,
        payload: &[u8],
        ticket: Option<Ticket>,
    ) -> Result<(), BufferError> {
        let forward = captures_any(&self.forward, topic);
        let Some(rule) = self.mirror_rule(topic) else {
            return match forward {
                true => intake.forward_kept(topic, payload, ticket),
                false => Ok(()),
            };
        };
        if forward {
            intake.forward(topic, payload)?;
        }
        let mut upstream = String::with_capacity(rule.prefix.len() + topic.len());
        upstream.push_str(&rule.prefix);
        upstream.push_str(topic);
        intake.mirror_kept(upstream, payload, ticket)
    }
}

/// A mirrored record as its own message: to the topic in its stream, with
/// its payload as it is. One too big for any packet of the link goes to
/// `too_big` (seq, payload size) instead.
pub(super) fn pack(
    r: RecordRef<'_>,
    max_packet: usize,
    out: &mut VecDeque<Message>,
    too_big: &mut Vec<(i64, usize)>,
) {
    debug_assert_eq!(r.kind, KIND_MIRROR);
    // Fixed header (5), topic length (2), topic, packet id (2).
    if 9 + r.stream.len() + r.payload.len() > max_packet {
        too_big.push((r.seq, r.payload.len()));
        return;
    }
    out.push_back(Message {
        topic: r.stream.to_owned(),
        stream_at: 0,
        payload: r.payload.to_vec(),
        seqs: vec![r.seq],
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rule(topics: &[&str], prefix: &str) -> MirrorRule {
        MirrorRule {
            topics: topics.iter().map(|s| s.to_string()).collect(),
            prefix: prefix.to_owned(),
        }
    }

    #[test]
    fn the_gateways_own_topics_stay_out_of_wildcard_filters() {
        let routes = Routes::new(&["#".to_owned()], &[rule(&["+/gw/#"], "site1/")]);
        assert!(routes.keeps("sensors/t1"));
        assert!(routes.keeps("x/gw/y"));
        for own in [
            "perch/gw/fn/deploy",
            "perch/gw/status",
            "perch/fleet/lab/deploy/f",
        ] {
            assert!(!routes.keeps(own), "{own}");
        }
        // Named, they are captured.
        let routes = Routes::new(
            &["perch/gw/status".to_owned()],
            &[rule(&["perch/+/fn/#"], "")],
        );
        assert!(routes.keeps("perch/gw/status"));
        assert!(routes.keeps("perch/gw/fn/echo/log"));
        assert!(!routes.keeps("perch/gw/other"));
    }

    #[test]
    fn the_first_matching_rule_maps_the_topic_and_filters_are_listed_once() {
        let routes = Routes::new(
            &["alerts/#".to_owned()],
            &[rule(&["sensors/#", "alerts/#"], "site1/"), rule(&["#"], "")],
        );
        assert_eq!(routes.filters(), vec!["alerts/#", "sensors/#", "#"]);
        assert_eq!(routes.mirror_rule("sensors/x").unwrap().prefix, "site1/");
        assert_eq!(routes.mirror_rule("other").unwrap().prefix, "");
        assert!(routes.keeps("alerts/a") && routes.keeps("other"));
        assert!(!Routes::new(&[], &[rule(&["a"], "")]).keeps("b"));
    }

    #[test]
    fn a_mirrored_record_travels_alone_and_raw() {
        let r = crate::buffer::StoredRecord {
            seq: 9,
            stream: "site1/sensors/x".into(),
            kind: KIND_MIRROR,
            created_ms: 1,
            payload: b"\x00raw\xff".to_vec(),
        };
        let (mut out, mut too_big) = (VecDeque::new(), Vec::new());
        pack(r.as_ref(), 1024, &mut out, &mut too_big);
        assert_eq!(out[0].topic, "site1/sensors/x");
        assert_eq!(out[0].payload, b"\x00raw\xff");
        assert_eq!(out[0].seqs, vec![9]);
        pack(r.as_ref(), 20, &mut out, &mut too_big);
        assert_eq!((out.len(), too_big), (1, vec![(9, 5)]));
    }

    #[test]
    fn a_bad_rule_is_refused_naming_its_key() {
        let err = Config::from_toml(
            "[[upstream.mirror]]\ntopics = [\"sensors/#/x\"]\nprefix = \"site/+/\"\n\
             [[upstream.mirror]]\ntopics = []\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "upstream.mirror[0].topics[0]",
            "upstream.mirror[0].prefix",
            "upstream.mirror[1].topics",
        ] {
            assert!(err.contains(key), "{key} in: {err}");
        }
        let err = Config::from_toml(
            "[[upstream.mirror]]\ntopics = [\"a\"]\nprefx = \"s/\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("prefx"), "{err}");
    }
}
