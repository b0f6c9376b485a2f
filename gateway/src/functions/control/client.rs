//! The thin MQTT client of the control plane that `perch fn ...` and
//! `perch status` use: one short connection per request, subscribed to the
//! reply topic before the request goes out. A refused login or
//! subscription says who the client was and which login would do.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use serde::Serialize;

use super::{
    command_topic, deploy_reply_topic, deploy_topic, encode_deploy_request, list_reply_topic,
    list_topic, logs_topic, reply_topic, sha256_hex, status_topic, CommandReply, CommandRequest,
    ControlError, DeployOptions, DeployReply, FunctionInfo, InvokeReply, InvokeRequest,
    ReplayReply, ReplayRequest,
};

/// How the `perch fn` client reaches a gateway.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` of the gateway's broker.
    pub broker: String,
    /// The gateway's id.
    pub gateway: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// How long to wait for the reply.
    pub timeout: Duration,
}

impl Endpoint {
    /// The options of a client of the gateway's broker: a fresh client id,
    /// the login if one was given, packets up to `incoming` / `outgoing`
    /// bytes. `broker` was checked as `host:port` by the command line.
    pub fn mqtt_options(&self, incoming: usize, outgoing: usize) -> MqttOptions {
        let (host, port) = match self.broker.rsplit_once(':') {
            Some((h, p)) => (h.trim_matches(['[', ']']), p.parse().unwrap_or(1883)),
            None => (self.broker.as_str(), 1883),
        };
        let client_id = format!("perch-cli-{:016x}", rand::random::<u64>());
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(incoming, outgoing);
        if let Some(user) = &self.username {
            options.set_credentials(user, self.password.as_deref().unwrap_or(""));
        }
        options
    }

    /// Who the client logs in as, for messages: `as user "ops"` or
    /// `anonymously (no --user)`.
    pub fn login(&self) -> String {
        match &self.username {
            Some(user) => format!("as user {user:?}"),
            None => "anonymously (no --user)".to_owned(),
        }
    }
}

/// The flags that give the client a login.
const LOGIN_FLAGS: &str = "give its name and password with --user NAME --password PASSWORD \
     (-u/-P, or PERCH_USERNAME and PERCH_PASSWORD)";

/// What a client needs for a request: with a publish, the control topics,
/// which take an admin; without one, read access to `topic`.
fn needs(publish: bool, topic: &str) -> String {
    if publish {
        "the functions control topics (perch/<id>/fn/...) take an admin login: a \
         [[broker.users]] entry with admin = true"
            .to_owned()
    } else {
        format!(
            "reading {topic} takes a login whose subscribe list covers it (or an admin's, \
             for perch/<id>/fn/...)"
        )
    }
}

/// Why the broker refused the client's CONNECT (`code`), who the client
/// was, what it needs (`needs`) and the flags that supply it.
pub fn refusal(endpoint: &Endpoint, code: ConnectReturnCode, needs: &str) -> String {
    let why = match code {
        ConnectReturnCode::BadUserNamePassword => "wrong user name or password".to_owned(),
        ConnectReturnCode::NotAuthorized => "not authorized".to_owned(),
        ConnectReturnCode::ServiceUnavailable => {
            "too many failed logins lately: wait a minute".to_owned()
        }
        code => format!("{code:?}"),
    };
    format!(
        "the gateway's broker at {} refused perch's login {} ({why}); {needs}: {LOGIN_FLAGS}",
        endpoint.broker,
        endpoint.login()
    )
}

/// Publishes `payload` to `topic` and returns the first message on
/// `reply_topic` that `accept` takes. Subscribes before publishing, so the
/// reply cannot be missed.
pub async fn request(
    endpoint: &Endpoint,
    topic: &str,
    reply_topic: &str,
    payload: Vec<u8>,
    accept: impl Fn(&[u8]) -> bool,
) -> Result<Bytes, ControlError> {
    request_inner(
        endpoint,
        Some((topic, payload)),
        reply_topic,
        accept,
        &mut || {},
    )
    .await
}

/// [`request`], or with no publish a wait for the first (retained) message
/// on `reply_topic` that `accept` takes.
async fn request_inner(
    endpoint: &Endpoint,
    publish: Option<(&str, Vec<u8>)>,
    reply_topic: &str,
    accept: impl Fn(&[u8]) -> bool,
    on_sent: &mut dyn FnMut(),
) -> Result<Bytes, ControlError> {
    let size = publish.as_ref().map_or(0, |(_, p)| p.len());
    // A bundle is one packet; rumqttc's default limit is 10 KiB.
    let options = endpoint.mqtt_options(size + 1024 * 1024, size + 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let needs = needs(publish.is_some(), reply_topic);
    let connect_err = |message: String| ControlError::Connect {
        addr: endpoint.broker.clone(),
        message,
    };
    let poll_err = |e: ConnectionError| match e {
        ConnectionError::ConnectionRefused(code) => {
            ControlError::Refused(refusal(endpoint, code, &needs))
        }
        e => connect_err(e.to_string()),
    };
    let exchange = async {
        client
            .subscribe(reply_topic, QoS::AtLeastOnce)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let mut publish = publish;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack)))
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) =>
                {
                    return Err(ControlError::Refused(format!(
                        "the gateway's broker at {} let perch in {} but refused its \
                         subscription to {reply_topic}; {needs}: {}",
                        endpoint.broker,
                        endpoint.login(),
                        LOGIN_FLAGS
                    )));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some((topic, payload)) = publish.take() {
                        client
                            .publish(topic, QoS::AtLeastOnce, false, payload)
                            .await
                            .map_err(|e| connect_err(e.to_string()))?;
                    }
                }
                // The broker has the request (for 5.0 clients a refusal
                // would say so here; 3.1.1 acknowledges even a publish the
                // ACL dropped).
                Ok(Event::Incoming(Packet::PubAck(_))) => on_sent(),
                Ok(Event::Incoming(Packet::Publish(p)))
                    if p.topic == reply_topic && accept(&p.payload) =>
                {
                    return Ok(p.payload);
                }
                Ok(_) => {}
                Err(e) => return Err(poll_err(e)),
            }
        }
    };
    let result = tokio::time::timeout(endpoint.timeout, exchange)
        .await
        .unwrap_or(Err(ControlError::Timeout {
            gateway: endpoint.gateway.clone(),
            timeout: endpoint.timeout,
            login: endpoint.login(),
        }));
    let _ = client.try_disconnect();
    result
}

/// Deploys a bundle and returns the gateway's reply.
pub async fn deploy(
    endpoint: &Endpoint,
    options: &DeployOptions,
    bundle: Vec<u8>,
) -> Result<DeployReply, ControlError> {
    deploy_with_progress(endpoint, options, bundle, &mut || {}).await
}

/// [`deploy`], calling `on_sent` once the broker acknowledged the upload.
pub async fn deploy_with_progress(
    endpoint: &Endpoint,
    options: &DeployOptions,
    bundle: Vec<u8>,
    on_sent: &mut dyn FnMut(),
) -> Result<DeployReply, ControlError> {
    let bundle_sha256 = sha256_hex(&bundle);
    let reply = request_inner(
        endpoint,
        Some((
            &deploy_topic(&endpoint.gateway),
            encode_deploy_request(options, &bundle),
        )),
        &deploy_reply_topic(&endpoint.gateway),
        |p| {
            serde_json::from_slice::<DeployReply>(p).is_ok_and(|r| r.bundle_sha256 == bundle_sha256)
        },
        on_sent,
    )
    .await?;
    // `accept` parsed it already.
    Ok(
        serde_json::from_slice(&reply).unwrap_or_else(|_| DeployReply {
            ok: false,
            bundle_sha256: String::new(),
            name: None,
            version: None,
            sha256: None,
            replaced: None,
            request_id: None,
            error: Some("unreadable reply".into()),
            warning: None,
            state: None,
        }),
    )
}

/// Sends a rollback or remove and returns the gateway's reply.
pub async fn command(
    endpoint: &Endpoint,
    command: &str,
    name: &str,
) -> Result<CommandReply, ControlError> {
    let reply = tagged_request(
        endpoint,
        command,
        |request_id| CommandRequest {
            name: name.to_owned(),
            request_id,
        },
        |r: &CommandReply| r.request_id.as_deref(),
    )
    .await?;
    Ok(serde_json::from_slice(&reply).unwrap_or_default())
}

/// Runs a function once on one event through the gateway; its outputs
/// come back in the reply and are not delivered.
pub async fn invoke(
    endpoint: &Endpoint,
    invocation: InvokeRequest,
) -> Result<InvokeReply, ControlError> {
    let reply = tagged_request(
        endpoint,
        "invoke",
        |request_id| InvokeRequest {
            request_id,
            ..invocation
        },
        |r: &InvokeReply| r.request_id.as_deref(),
    )
    .await?;
    serde_json::from_slice(&reply).map_err(|e| ControlError::Invoke(e.to_string()))
}

/// Replays kept events through the gateway; returns its summary.
pub async fn replay(
    endpoint: &Endpoint,
    replay: ReplayRequest,
) -> Result<ReplayReply, ControlError> {
    let reply = tagged_request(
        endpoint,
        "replay",
        |request_id| ReplayRequest {
            request_id,
            ..replay
        },
        |r: &ReplayReply| r.request_id.as_deref(),
    )
    .await?;
    serde_json::from_slice(&reply).map_err(|e| ControlError::Replay(e.to_string()))
}

/// One request on `perch/<id>/fn/<command>` carrying a fresh request id
/// (`body` builds it around the id), and the raw reply on its reply topic
/// whose id (`id_of` a `Reply`) matches: replies to other callers' requests
/// on the same topic are skipped.
async fn tagged_request<Request: Serialize, Reply: serde::de::DeserializeOwned>(
    endpoint: &Endpoint,
    command: &str,
    body: impl FnOnce(Option<String>) -> Request,
    id_of: fn(&Reply) -> Option<&str>,
) -> Result<Bytes, ControlError> {
    let request_id = format!("{:016x}", rand::random::<u64>());
    let body = serde_json::to_vec(&body(Some(request_id.clone()))).unwrap_or_default();
    request(
        endpoint,
        &command_topic(&endpoint.gateway, command),
        &reply_topic(&endpoint.gateway, command),
        body,
        |p| {
            serde_json::from_slice::<Reply>(p).is_ok_and(|r| id_of(&r) == Some(request_id.as_str()))
        },
    )
    .await
}

/// Reads the retained status of one function.
pub async fn status(endpoint: &Endpoint, name: &str) -> Result<FunctionInfo, ControlError> {
    let reply = request_inner(
        endpoint,
        None,
        &status_topic(&endpoint.gateway, name),
        |p| serde_json::from_slice::<FunctionInfo>(p).is_ok(),
        &mut || {},
    )
    .await
    .map_err(|e| match e {
        ControlError::Timeout { gateway, .. } => ControlError::NoStatus {
            gateway,
            name: name.to_owned(),
        },
        e => e,
    })?;
    serde_json::from_slice(&reply).map_err(|e| ControlError::NoStatus {
        gateway: format!("{} ({e})", endpoint.gateway),
        name: name.to_owned(),
    })
}

/// Lists the gateway's functions.
pub async fn list(endpoint: &Endpoint) -> Result<Vec<FunctionInfo>, ControlError> {
    let reply = request(
        endpoint,
        &list_topic(&endpoint.gateway),
        &list_reply_topic(&endpoint.gateway),
        b"{}".to_vec(),
        |p| serde_json::from_slice::<Vec<FunctionInfo>>(p).is_ok(),
    )
    .await?;
    Ok(serde_json::from_slice(&reply).unwrap_or_default())
}

/// Prints a function's log lines as they are published: calls `line` for
/// each, until `until` resolves. The lines are live; none are kept.
pub async fn follow_logs(
    endpoint: &Endpoint,
    name: &str,
    until: impl std::future::Future<Output = ()>,
    mut line: impl FnMut(&[u8]),
) -> Result<(), ControlError> {
    let options = endpoint.mqtt_options(1024 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let topic = logs_topic(&endpoint.gateway, name);
    let needs = needs(false, &topic);
    let connect_err = |message: String| ControlError::Connect {
        addr: endpoint.broker.clone(),
        message,
    };
    client
        .subscribe(&topic, QoS::AtMostOnce)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let read = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => line(&p.payload),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => {
                    return Err(ControlError::Refused(refusal(endpoint, code, &needs)))
                }
                Err(e) => return Err(connect_err(e.to_string())),
            }
        }
    };
    let result = tokio::select! {
        r = read => r,
        () = until => Ok(()),
    };
    let _ = client.try_disconnect();
    result
}
