//! Trigger links: one in-process broker link per distinct trigger filter,
//! queuing each publish for the functions it serves (see "Trigger links" in
//! [`super::dispatch`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use rumqttd::Notification;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::dispatch::{Event, FunctionHandle};
use super::runtime::now_ms;
use crate::broker::{BrokerError, Links};
use crate::kit::topic;

/// A trigger filter's subscriber: a function, with all its filters so the
/// link can tell whether this filter is the one that delivers to it.
#[derive(Clone)]
pub struct Subscriber {
    pub handle: Arc<FunctionHandle>,
    pub filters: Arc<[String]>,
}

/// The trigger links: one broker link per distinct trigger filter.
pub struct Triggers {
    links: Links,
    filters: HashMap<String, TriggerLink>,
    next_id: u64,
}

struct TriggerLink {
    subscribers: watch::Sender<Arc<[Subscriber]>>,
    tx: LinkTx,
    task: JoinHandle<()>,
}

impl Triggers {
    pub fn new(links: Links) -> Triggers {
        Triggers {
            links,
            filters: HashMap::new(),
            next_id: 0,
        }
    }

    /// Makes the links match the functions' filters: subscribes new filters,
    /// closes unused ones, updates the subscribers of the rest. Runs on a
    /// blocking thread inside the runtime (it opens links, which waits for
    /// the router).
    pub fn update(&mut self, functions: &[Subscriber]) -> Result<(), BrokerError> {
        let mut wanted: HashMap<&str, Vec<Subscriber>> = HashMap::new();
        for s in functions {
            for f in s.filters.iter() {
                wanted.entry(f.as_str()).or_default().push(s.clone());
            }
        }
        let unused: Vec<String> = self
            .filters
            .keys()
            .filter(|f| !wanted.contains_key(f.as_str()))
            .cloned()
            .collect();
        for filter in unused {
            if let Some(link) = self.filters.remove(&filter) {
                close(link);
            }
        }
        for (filter, subscribers) in wanted {
            let subscribers: Arc<[Subscriber]> = subscribers.into();
            if let Some(link) = self.filters.get(filter) {
                link.subscribers.send_replace(subscribers);
                continue;
            }
            self.next_id += 1;
            let (mut tx, rx) = self.links.open(&format!("trigger-{}", self.next_id))?;
            // Subscribing is asynchronous (the SubAck comes later), but the
            // router handles its events in order: anything published after
            // this call returns is routed with the subscription in place.
            tx.subscribe(filter).map_err(|source| BrokerError::Link {
                client_id: format!("trigger-{}", self.next_id),
                source: Box::new(source),
            })?;
            let (subs_tx, subs_rx) = watch::channel(subscribers);
            let task = tokio::spawn(run_trigger_link(filter.to_owned(), rx, subs_rx));
            self.filters.insert(
                filter.to_owned(),
                TriggerLink {
                    subscribers: subs_tx,
                    tx,
                    task,
                },
            );
        }
        Ok(())
    }

    /// Closes every link.
    pub fn close_all(&mut self) {
        for (_, link) in self.filters.drain() {
            close(link);
        }
    }

    /// The filters currently subscribed.
    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.filters.keys().map(String::as_str)
    }
}

fn close(mut link: TriggerLink) {
    link.task.abort();
    // Disconnecting frees the link's place in the router. `send` is async in
    // signature only (it does not await), so one poll completes it.
    let packet = Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    );
    let mut send = std::pin::pin!(link.tx.send(packet));
    let _ = send
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
}

/// Receives the publishes of one trigger filter and queues them for the
/// functions it serves.
async fn run_trigger_link(
    filter: String,
    mut rx: LinkRx,
    subscribers: watch::Receiver<Arc<[Subscriber]>>,
) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Forward(forward))) => {
                let publish = forward.publish;
                let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                    continue;
                };
                let timestamp_ms = now_ms();
                // The borrow is a read lock, held for this synchronous loop
                // only (never across an await).
                let subscribers = subscribers.borrow();
                for s in subscribers.iter() {
                    let first = s.filters.iter().find(|f| topic::matches(f, topic));
                    if first.is_some_and(|f| *f == filter) {
                        s.handle.push(Event {
                            topic: publish.topic.clone(),
                            payload: publish.payload.clone(),
                            timestamp_ms,
                        });
                    }
                }
            }
            // The router paused this link because notifications piled up;
            // it must be told we are ready or it never resumes.
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    break;
                }
            }
            Ok(Some(Notification::Disconnect(..))) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(filter, error = %e, "trigger link closed");
                break;
            }
        }
    }
}
