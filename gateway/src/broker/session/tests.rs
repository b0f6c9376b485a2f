//! Tests of the session store: what survives a reopen, within bounds.

use super::*;

fn no_links() -> Arc<Opener> {
    Arc::new(|_: &str, _: bool| Err(Box::new(LinkError::NotConnectionAck)))
}

fn reopen(dir: &Path, bounds: Bounds) -> Vec<Stored> {
    open(dir, bounds, no_links()).unwrap().1
}

const BOUNDS: Bounds = Bounds {
    max_sessions: 2,
    max_subscriptions: 2,
};

fn sub(filter: &str, qos: u8) -> Sub {
    Sub {
        filter: filter.to_owned(),
        qos,
        no_local: false,
        retain_as_published: false,
    }
}

#[test]
fn sessions_and_their_subscriptions_survive_a_reopen_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, stored) = open(dir.path(), BOUNDS, no_links()).unwrap();
        assert!(stored.is_empty());
        s.connected("a", Some(None));
        s.subscribed("a", sub("x/#", 1));
        s.subscribed("a", sub("y", 2));
        s.subscribed("a", sub("z", 0)); // over max_subscriptions
        s.subscribed("a", sub("x/#", 2)); // replaces: within the bound
        s.unsubscribed("a", "y");
        s.connected("b", Some(Some(3_600)));
        s.connected("c", Some(None)); // over max_sessions
        s.subscribed("c", sub("c", 1));
        s.connected("d", None); // clean: nothing stored
        assert!(s.flush(Duration::from_secs(5)));
        assert_eq!(s.stats().over_bound.load(Ordering::Relaxed), 2);
    }
    let stored = reopen(dir.path(), BOUNDS);
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0].client_id, "a");
    assert_eq!(stored[0].expires_in_s, None);
    assert_eq!(stored[0].subs, vec![sub("x/#", 2)]);
    assert_eq!(stored[1].client_id, "b");
    assert!(matches!(stored[1].expires_in_s, Some(3_599..=3_600)));
}

#[test]
fn expired_and_cleaned_sessions_are_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = open(dir.path(), BOUNDS, no_links()).unwrap();
        let s = Arc::new(s);
        let g = s.connected("gone", Some(Some(0)));
        s.subscribed("gone", sub("g", 1));
        s.ended("gone".to_owned(), g, Some(Some(0)));
        s.connected("wiped", Some(None));
        s.connected("wiped", None);
        assert!(s.flush(Duration::from_secs(5)));
    }
    assert!(reopen(dir.path(), BOUNDS).is_empty());
}
