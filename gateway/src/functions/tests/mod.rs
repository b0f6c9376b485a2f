//! Tests of the functions stage, by theme: the sandbox running WAT modules
//! ([`sandbox`]), the modules a deploy refuses and the memory a replaced
//! version gives back ([`modules`]), the whole stage (registry, workers,
//! trigger links) against a real broker router and a real SQLite file
//! ([`stage`]), and versions, rollback and the control topics
//! ([`versions`]). The shared modules and helpers are here.

mod modules;
mod sandbox;
mod stage;
mod time_limits;
mod versions;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::LinkRx;
use rumqttd::Notification;
use tokio::sync::mpsc;

use super::control::encode_bundle;
use super::manifest::Manifest;
use super::runtime::{code, Failure, Instance, Runtime, Seed};
use super::*;
use crate::broker::{Broker, BrokerConfig};

/// A module that exercises every import. `perch_on_event` counts events in
/// state ("count"), publishes the payload to `alerts/x`, emits `m` = 1.5,
/// forwards the payload to stream `s`, then misbehaves by the payload's first
/// byte: `L` loops forever, `G` grows memory past any sane limit, `E`
/// returns 7, `O` passes an out-of-bounds pointer, `R` recurses forever, `D`
/// publishes to a topic outside `publish.allow` and returns the result.
/// `perch_on_timer` publishes the config value `limit`.
pub const GOOD_WAT: &str = r#"
(module
  (import "perch" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
  (import "perch" "emit" (func $emit (param i32 i32 i32 i32 f64) (result i32)))
  (import "perch" "forward" (func $forward (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_get" (func $state_get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_set" (func $state_set (param i32 i32 i32 i32) (result i32)))
  (import "perch" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "log" (func $log (param i32 i32 i32)))
  (import "perch" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "alerts/x")
  (data (i32.const 16) "m")
  (data (i32.const 20) "s")
  (data (i32.const 24) "count")
  (data (i32.const 32) "limit")
  (data (i32.const 40) "secret")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_init") (result i32)
    (call $log (i32.const 2) (i32.const 0) (i32.const 8))
    (i32.const 0))
  (func $recurse (result i32) (call $recurse))
  (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param $ts i64) (result i32)
    (local $p i32) (local $c i32)
    (local.set $p (i32.add (i32.const 1024) (local.get $tl)))
    (if (i32.ne (call $state_get (i32.const 24) (i32.const 5) (i32.const 64) (i32.const 8)) (i32.const 8))
      (then (i64.store (i32.const 64) (i64.const 0))))
    (i64.store (i32.const 64) (i64.add (i64.load (i32.const 64)) (i64.const 1)))
    (drop (call $state_set (i32.const 24) (i32.const 5) (i32.const 64) (i32.const 8)))
    (drop (call $publish (i32.const 0) (i32.const 8) (local.get $p) (local.get $pl)))
    (drop (call $emit (i32.const 16) (i32.const 1) (i32.const 0) (i32.const 0) (f64.const 1.5)))
    (drop (call $forward (i32.const 20) (i32.const 1) (local.get $p) (local.get $pl)))
    (local.set $c (if (result i32) (local.get $pl)
      (then (i32.load8_u (local.get $p))) (else (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 76)) (then (loop $l (br $l))))
    (if (i32.eq (local.get $c) (i32.const 71)) (then (drop (memory.grow (i32.const 100)))))
    (if (i32.eq (local.get $c) (i32.const 69)) (then (return (i32.const 7))))
    (if (i32.eq (local.get $c) (i32.const 79))
      (then (drop (call $publish (i32.const -16) (i32.const 100) (i32.const 0) (i32.const 0)))))
    (if (i32.eq (local.get $c) (i32.const 82)) (then (drop (call $recurse))))
    (if (i32.eq (local.get $c) (i32.const 68))
      (then (return (call $publish (i32.const 40) (i32.const 6) (i32.const 0) (i32.const 0)))))
    (i32.const 0))
  (func (export "perch_on_timer") (param $ts i64) (result i32)
    (local $n i32)
    (local.set $n (call $config_get (i32.const 32) (i32.const 5) (i32.const 128) (i32.const 64)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (local.get $n))))
    (call $publish (i32.const 0) (i32.const 8) (i32.const 128) (local.get $n)))
)
"#;

pub const GOOD_MANIFEST: &str = r#"
name = "echo"
version = "1.0.0"
[triggers]
topics = ["sensors/#"]
[limits]
fuel = 1000000
max_consecutive_failures = 3
[publish]
allow = ["alerts/#"]
[config]
limit = 30.5
"#;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test WAT is valid")
}

fn runtime() -> (Runtime, mpsc::Receiver<Output>) {
    let (tx, rx) = mpsc::channel(64);
    (Runtime::new(tx), rx)
}

fn instance(rt: &Runtime, wat: &str, manifest: &str) -> Instance {
    let compiled = rt
        .compile(Manifest::from_toml(manifest).unwrap(), &wasm(wat))
        .unwrap();
    rt.instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap()
}

fn deploy_error(wat: &str, manifest: &str) -> String {
    let (rt, _rx) = runtime();
    let result = rt
        .compile(
            Manifest::from_toml(manifest).unwrap(),
            &wat::parse_str(wat).unwrap(),
        )
        .map_err(|e| e.to_string())
        .and_then(|c| {
            rt.instantiate(&c, Seed::default())
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
        });
    result.expect_err("the module should be refused")
}

fn released(instance: &mut Instance) -> Vec<(String, String)> {
    let mut out = Vec::new();
    instance.release(|t, p| {
        out.push((
            String::from_utf8(t.to_vec()).unwrap(),
            String::from_utf8(p.to_vec()).unwrap(),
        ))
    });
    out
}

// ---- the whole stage, with a real broker router and a real SQLite file ----

fn broker() -> Broker {
    let config = BrokerConfig {
        listeners: Vec::new(),
        ..BrokerConfig::default()
    };
    Broker::start(&config).unwrap()
}

async fn start(broker: &Broker, dir: &std::path::Path) -> (Functions, mpsc::Receiver<Output>) {
    let (tx, rx) = mpsc::channel(64);
    let config = FunctionsConfig {
        state_commit_interval_ms: 50,
        ..FunctionsConfig::default()
    };
    let f = Functions::start(broker.links(), &config, dir, "gw", tx)
        .await
        .unwrap();
    (f, rx)
}

/// The next publish on a link, within 5 s.
async fn next_publish(rx: &mut LinkRx) -> (String, Bytes) {
    let wait = async {
        loop {
            match rx.next().await.unwrap() {
                Some(Notification::Forward(f)) => {
                    return (
                        String::from_utf8(f.publish.topic.to_vec()).unwrap(),
                        f.publish.payload,
                    )
                }
                Some(Notification::Unschedule) => rx.wake().await.unwrap(),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("a publish within 5 s")
}

async fn wait_for(f: &Functions, name: &str, what: impl Fn(&FunctionInfo) -> bool) -> FunctionInfo {
    for _ in 0..1000 {
        if let Some(info) = f.list().into_iter().find(|i| i.name == name) {
            if what(&info) {
                return info;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never reached the expected state: {:?}", f.list());
}
