//! Invoking a function by hand and replaying its kept events (`perch fn invoke`, `perch fn replay`): nothing they make is delivered.

use super::*;

impl Inner {
    /// Handles an invoke request; always answers.
    pub(super) fn invoke(&self, payload: &[u8]) -> control::InvokeReply {
        let request = match control::InvokeRequest::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                return control::InvokeReply {
                    error: Some(e.to_string()),
                    ..control::InvokeReply::default()
                }
            }
        };
        let mut reply = control::InvokeReply {
            request_id: request.request_id.clone(),
            name: Some(request.name.clone()),
            ..control::InvokeReply::default()
        };
        match self.try_invoke(&request) {
            Ok((topic, invoked)) => {
                reply.ok = invoked.failure.is_none();
                reply.version = Some(invoked.version);
                reply.topic = Some(topic);
                reply.duration_us = invoked.duration.as_micros().min(u64::MAX as u128) as u64;
                reply.fuel_used = invoked.fuel_used;
                reply.failure = invoked.failure;
                reply.outputs = invoked.outputs;
                reply.logs = invoked
                    .logs
                    .iter()
                    .filter_map(|l| serde_json::from_slice(l).ok())
                    .collect();
            }
            Err(e) => {
                tracing::warn!(function = %request.name, "invoke refused: {e}");
                reply.error = Some(e.to_string());
            }
        }
        reply
    }

    /// Handles a replay request; always answers.
    pub(super) fn replay(&self, payload: &[u8]) -> control::ReplayReply {
        let request = match control::ReplayRequest::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                return control::ReplayReply {
                    error: Some(e.to_string()),
                    ..control::ReplayReply::default()
                }
            }
        };
        let mut reply = control::ReplayReply {
            request_id: request.request_id.clone(),
            name: Some(request.name.clone()),
            ..control::ReplayReply::default()
        };
        match self.try_replay(&request) {
            Ok((events, r)) => {
                reply.ok = true;
                reply.version = Some(r.version);
                reply.events = events;
                reply.replayed = r.replayed;
                reply.errors = r.errors;
                reply.first_errors = r.first_errors;
                reply.publishes = r.publishes;
                reply.emits = r.emits;
                reply.forwards = r.forwards;
                reply.differed = r.differed;
                reply.outputs = r.outputs;
                reply.duration_us = r.duration.as_micros().min(u64::MAX as u128) as u64;
            }
            Err(e) => {
                tracing::warn!(function = %request.name, "replay refused: {e}");
                reply.error = Some(e);
            }
        }
        reply
    }

    /// Returns (events kept in the window, what the replay did).
    pub(super) fn try_replay(
        &self,
        request: &control::ReplayRequest,
    ) -> Result<(u64, dispatch::Replayed), String> {
        let name = &request.name;
        let since_s = control::parse_duration(&request.since)?;
        let handle = self
            .lock()
            .functions
            .get(name)
            .map(|e| e.handle.clone())
            .ok_or_else(|| DeployError::NotDeployed(name.clone()).to_string())?;
        let live_version = handle.status().version;
        let versions = self.registry.versions(name).map_err(|e| e.to_string())?;
        let live = versions
            .iter()
            .rev()
            .find(|v| v.version == live_version)
            .ok_or_else(|| format!("function {name:?} has no version running yet"))?;
        let keep_s = Manifest::from_toml(&live.manifest)
            .map(|m| m.replay.keep_events_s)
            .unwrap_or(0);
        if keep_s == 0 {
            return Err(format!(
                "function {name:?} ({live_version}) does not keep its trigger events, so there \
                 is nothing to replay: set `[replay] keep_events_s = 3600` in its manifest and \
                 deploy it; events that arrive after that can be replayed"
            ));
        }
        let compiled = match &request.version {
            None => None,
            Some(v) if *v == live_version => None,
            Some(v) => {
                let stored = versions
                    .iter()
                    .rev()
                    .find(|s| s.version == *v)
                    .ok_or_else(|| {
                        format!(
                            "function {name:?} has no version {v:?} on this gateway (kept: {}); \
                         give one of those, or none for the live version",
                            versions
                                .iter()
                                .map(|s| s.version.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                let manifest = self.manifest(&stored.manifest).map_err(|e| e.to_string())?;
                let compiled = self
                    .runtime
                    .compile(manifest, &stored.wasm)
                    .map_err(|e| e.to_string())?;
                Some(Arc::new(compiled))
            }
        };
        let now = runtime::now_ms();
        let since_ms = now.saturating_sub((since_s as i64).saturating_mul(1000));
        let reader = crate::buffer::Reader::open(&self.buffer_path).map_err(|e| e.to_string())?;
        let (events, total) = reader
            .events_since(name, since_ms, now, MAX_REPLAY_EVENTS)
            .map_err(|e| format!("cannot read the kept events: {e}"))?;
        if events.is_empty() {
            return Err(format!(
                "no trigger events of function {name:?} were kept in the last {} (it keeps \
                 them for {keep_s} s); publish some, or replay a longer window",
                request.since.trim()
            ));
        }
        let (reply_tx, reply_rx) = sync_mpsc::sync_channel(1);
        handle.replay(dispatch::Replay {
            compiled,
            events,
            reply: reply_tx,
        });
        let replayed = reply_rx
            .recv_timeout(READY_TIMEOUT)
            .map_err(|_| DeployError::Timeout(name.clone()).to_string())??;
        Ok((total, replayed))
    }

    pub(super) fn try_invoke(
        &self,
        request: &control::InvokeRequest,
    ) -> Result<(String, dispatch::Invoked), DeployError> {
        let name = &request.name;
        let (handle, filters) = self
            .lock()
            .functions
            .get(name)
            .map(|e| (e.handle.clone(), e.filters.clone()))
            .ok_or_else(|| DeployError::NotDeployed(name.clone()))?;
        let topic = match &request.topic {
            Some(t) => t.clone(),
            None => filters
                .first()
                .map(|f| {
                    f.split('/')
                        .map(|l| if l == "+" || l == "#" { "invoke" } else { l })
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .ok_or_else(|| {
                    DeployError::Invoke(format!(
                        "function {name:?} has no topic trigger to take the event's topic \
                         from; give one with --topic"
                    ))
                })?,
        };
        if let Err(e) = crate::kit::topic::validate_name(&topic) {
            return Err(DeployError::Invoke(format!(
                "the event topic {topic:?} is not one a client could publish on: {e}; give a \
                 topic without wildcards, such as sensors/a"
            )));
        }
        let (reply_tx, reply_rx) = sync_mpsc::sync_channel(1);
        handle.invoke(dispatch::Invoke {
            event: dispatch::Event {
                topic: Bytes::from(topic.clone()),
                payload: Bytes::from(request.payload.clone().into_bytes()),
                timestamp_ms: runtime::now_ms(),
            },
            reply: reply_tx,
        });
        let invoked = reply_rx
            .recv_timeout(READY_TIMEOUT)
            .map_err(|_| DeployError::Timeout(name.clone()))?
            .map_err(DeployError::Invoke)?;
        Ok((topic, invoked))
    }
}
