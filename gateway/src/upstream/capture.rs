//! Capture: what goes upstream without a function.
//!
//! `forward_topics` lists local topic filters whose messages go upstream
//! without a function, each as a record in the stream named by its topic.
//! What MQTT clients publish there is kept by the broker's codecs through
//! [`Forwarding`], straight into the buffer as they read it, and a QoS 1/2
//! message is acknowledged only once its record is committed
//! ([`crate::broker::kept`]). What does not come through a codec (a
//! function's publish, a will) is captured by a task that subscribes to the
//! filters through an in-process link; it skips the messages a codec kept
//! (marked so: [`crate::broker::kept::is_kept`]), so each is forwarded once.
//!
//! `[[upstream.mirror]]` topics are captured the same way, by the same
//! keeper and links; [`super::mirror::Routes`] decides per topic whether a
//! message becomes an enveloped record, a mirrored one, or both.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::mirror::Routes;
use super::{Stats, UpstreamConfig, UpstreamError};
use crate::buffer::{Buffer, Intake};

/// What the broker's codecs hand messages on `forward_topics` and mirrored
/// topics to: the buffer's intake, as [`Routes`] says.
pub struct Forwarding {
    routes: Routes,
    intake: Intake,
    stats: Arc<Stats>,
}

impl Forwarding {
    /// The keeper the broker's codecs hand messages on `forward_topics`
    /// and mirrored topics to; `None` when `config` forwards and mirrors
    /// nothing.
    pub fn keeper(
        config: &UpstreamConfig,
        buffer: &Buffer,
        stats: Arc<Stats>,
    ) -> Option<Arc<dyn crate::broker::kept::Keeper>> {
        let routes = Routes::new(&config.forward_topics, &config.mirror);
        if routes.is_empty() {
            return None;
        }
        Some(Arc::new(Forwarding {
            routes,
            intake: buffer.intake(),
            stats,
        }))
    }
}

impl crate::broker::kept::Keeper for Forwarding {
    fn keeps(&self, topic: &str) -> bool {
        self.routes.keeps(topic)
    }

    fn keep(
        &self,
        topic: &str,
        payload: &[u8],
        ticket: Option<crate::kit::durable::Ticket>,
    ) -> Result<(), crate::kit::durable::Refused> {
        match self.routes.keep(&self.intake, topic, payload, ticket) {
            Ok(()) => {
                self.stats.captured.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                refused(&self.stats, &e, topic);
                Err(crate::kit::durable::Refused)
            }
        }
    }
}

/// Counts a message on `forward_topics` the buffer did not take; logs it
/// once per 1000 so a stalled disk cannot flood the log.
fn refused(stats: &Stats, e: &crate::buffer::BufferError, topic: &str) {
    let n = stats.capture_refused.fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(1000) {
        tracing::warn!(
            error = %e,
            refused = n + 1,
            "upstream capture: a message on {topic} was not buffered"
        );
    }
}

/// Subscribes to the filters of `routes` on the local broker and hands
/// every message to the buffer as they say (forwarded, mirrored), until
/// `shutdown`; skips those a codec kept already
/// ([`crate::broker::kept::is_kept`]).
///
/// rumqttd delivers a message once per matching subscription of a
/// connection and does not say which matched, so each filter gets its own
/// link, and a message is taken only by the first filter in the list that
/// matches it: overlapping filters forward it once.
pub fn capture(
    broker: &crate::broker::Broker,
    routes: Routes,
    intake: Intake,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, UpstreamError> {
    let filters = Arc::new(routes.filters());
    let routes = Arc::new(routes);
    let mut tasks = Vec::new();
    for i in 0..filters.len() {
        let name = format!("upstream-capture-{i}");
        let (mut tx, mut rx) = broker.link(&name)?;
        tx.subscribe(filters[i].clone())
            .map_err(|e| crate::broker::BrokerError::Link {
                client_id: name.clone(),
                source: Box::new(e),
            })?;
        let (filters, routes, intake, stats, mut shutdown) = (
            filters.clone(),
            routes.clone(),
            intake.clone(),
            stats.clone(),
            shutdown.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _tx = tx; // dropping it would end the link
                          // The log offset of the last message read: the router numbers
                          // a filter's messages consecutively, so a gap is what it
                          // dropped before this link read it.
            let mut last_offset: Option<u64> = None;
            loop {
                let next = tokio::select! {
                    n = rx.next() => n,
                    _ = shutdown.changed() => return,
                };
                match next {
                    Ok(Some(rumqttd::Notification::Forward(f))) => {
                        if let Some((_, offset)) = f.cursor {
                            let lost = skipped(last_offset, offset);
                            last_offset = Some(offset);
                            if lost > 0 {
                                let before = stats.capture_lost.fetch_add(lost, Ordering::Relaxed);
                                tracing::warn!(
                                    lost,
                                    lost_total = before + lost,
                                    filter = filters[i],
                                    "upstream capture: the broker dropped messages the capture \
                                     had not read yet (it fell behind by more than the \
                                     broker keeps per filter: broker.max_message_log_bytes / \
                                     max_filters); those MQTT clients published were kept \
                                     by the broker, in-process ones (functions, wills) among \
                                     them were not forwarded"
                                );
                            }
                        }
                        if crate::broker::kept::is_kept(f.properties.as_ref()) {
                            continue; // a codec kept it already
                        }
                        let topic = String::from_utf8_lossy(&f.publish.topic);
                        if !routes.keeps(&topic) {
                            continue; // perch/... under a wildcard (mirror::captures)
                        }
                        if filters[..i]
                            .iter()
                            .any(|f| super::mirror::captures(f, &topic))
                        {
                            continue; // an earlier filter's link forwards it
                        }
                        match routes.keep(&intake, &topic, &f.publish.payload, None) {
                            Ok(()) => {
                                stats.captured.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => refused(&stats, &e, &topic),
                        }
                    }
                    Ok(Some(rumqttd::Notification::Unschedule)) => {
                        // The router pauses a link with many pending
                        // notifications until it says it is ready again.
                        if rx.ready().is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "upstream capture: local link closed");
                        return;
                    }
                }
            }
        }));
    }
    Ok(tasks)
}

/// Messages between two consecutive reads of one filter's log that the
/// reader never saw (offsets count every message appended to the filter).
fn skipped(last: Option<u64>, offset: u64) -> u64 {
    match last {
        Some(l) if offset > l => offset - l - 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_in_log_offsets_are_counted_as_skipped() {
        assert_eq!(skipped(None, 41), 0);
        assert_eq!(skipped(Some(41), 42), 0);
        assert_eq!(skipped(Some(41), 50), 8);
        // A restarted log (offsets from 0 again) is not a loss.
        assert_eq!(skipped(Some(41), 3), 0);
    }
}
