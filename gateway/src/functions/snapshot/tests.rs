use super::*;

fn version(v: &str) -> StoredVersion {
    StoredVersion {
        name: "f".into(),
        version: v.into(),
        manifest: "name = \"f\"".into(),
        wasm: vec![0, 97, 115, 109],
        sha256: format!("sha-{v}"),
        deployed_at_ms: 1,
        stopped_reason: None,
    }
}

fn state(n: u8) -> StateCache {
    StateCache::from_rows(vec![(b"n".to_vec(), vec![n])])
}

const LOOSE: Bounds = Bounds {
    keep: 10,
    max_age_ms: 1_000_000,
};

/// Deploys `v` on state `n`, snapshotting the state `left` the one before
/// left.
fn deploy(r: &Registry, v: &str, left: Option<&StateCache>, n: u8, bounds: Bounds) -> Option<i64> {
    let v = version(v);
    let new = state(n);
    r.take_over(&Takeover {
        version: &v,
        rollback_to: None,
        left: left.map(|s| (s, 100)),
        state: &new,
        bounds,
        now_ms: 200,
    })
    .unwrap()
}

#[test]
fn a_takeover_keeps_what_the_version_before_left_and_a_rollback_consumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::open(&dir.path().join("f.db")).unwrap();
    assert_eq!(
        deploy(&r, "1.0.0", Some(&state(0)), 1, LOOSE),
        None,
        "no version before"
    );
    let s1 = deploy(&r, "2.0.0", Some(&state(7)), 8, LOOSE).unwrap();
    assert_eq!(r.load_state("f").unwrap(), vec![(b"n".to_vec(), vec![8])]);
    let (target, seq) = r.rollback_target("f").unwrap().unwrap();
    assert_eq!(target.version, "1.0.0");
    let (info, rows) = r.snapshot_of(seq, LOOSE, 200).unwrap().unwrap();
    assert_eq!(
        (info.id, info.version.as_str(), info.keys),
        (s1, "1.0.0", 1)
    );
    assert_eq!(rows, vec![(b"n".to_vec(), vec![7])]);
    // Expired: never restored.
    let strict = Bounds {
        keep: 10,
        max_age_ms: 50,
    };
    assert!(r.snapshot_of(seq, strict, 200).unwrap().is_none());
    let restored = StateCache::from_rows(rows);
    r.take_over(&Takeover {
        version: &target,
        rollback_to: Some(seq),
        left: None,
        state: &restored,
        bounds: LOOSE,
        now_ms: 300,
    })
    .unwrap();
    assert_eq!(r.active().unwrap()[0].version, "1.0.0");
    assert_eq!(r.load_state("f").unwrap(), vec![(b"n".to_vec(), vec![7])]);
    assert!(r.snapshots("f").unwrap().is_empty(), "consumed");
}

#[test]
fn snapshots_are_bounded_and_go_with_their_versions() {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::open(&dir.path().join("f.db")).unwrap();
    let two = Bounds {
        keep: 2,
        max_age_ms: 1_000_000,
    };
    deploy(&r, "1.0.0", None, 1, two);
    for (i, v) in ["2.0.0", "3.0.0", "4.0.0", "5.0.0"].iter().enumerate() {
        deploy(&r, v, Some(&state(i as u8)), i as u8 + 1, two);
    }
    let kept: Vec<String> = r
        .snapshots("f")
        .unwrap()
        .into_iter()
        .map(|s| s.version)
        .collect();
    assert_eq!(kept, ["3.0.0", "4.0.0"], "the newest two");
    r.prune("f", 2).unwrap();
    let kept: Vec<String> = r
        .snapshots("f")
        .unwrap()
        .into_iter()
        .map(|s| s.version)
        .collect();
    assert_eq!(kept, ["4.0.0"], "3.0.0 was pruned with its snapshot");
    r.bound_snapshots(
        Bounds {
            keep: 2,
            max_age_ms: 10,
        },
        1_000,
    )
    .unwrap();
    assert!(r.snapshots("f").unwrap().is_empty(), "too old");
    deploy(&r, "6.0.0", Some(&state(9)), 10, two);
    assert_eq!(r.snapshots("f").unwrap().len(), 1);
    assert!(r.remove("f").unwrap());
    assert!(r.snapshots("f").unwrap().is_empty());
    let conn = r.conn();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM state_snapshot_rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "no rows left behind");
}
