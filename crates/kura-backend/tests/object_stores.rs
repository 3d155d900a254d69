//! The object-storage backend against real servers on loopback: moto's and s3s-fs's S3, and
//! Azurite's Azure Blob. Each passes the conformance suite, also with a share of requests
//! failing; a put costs one request and nothing is stated first.

use std::sync::Arc;

use kura_backend::test_servers::{Kind, TestStore};
use kura_backend::{Error, Faults, Location, Requests, conformance};

fn conformance_on(kind: Kind) {
    let store = TestStore::start(kind);
    let b = store
        .parsed("conformance")
        .open(&store.storage_env())
        .unwrap();
    if kind == Kind::S3sFs {
        // s3s-fs checks If-None-Match, then writes: two racing creates can both succeed
        // (this suite's race check found it). Every other rule holds there.
        conformance::run_without_create_race(b.as_ref());
    } else {
        conformance::run(b.as_ref());
    }
    // The suite wrote under its prefix only: a second vault beside it sees nothing.
    let beside = store.parsed("other").open(&store.storage_env()).unwrap();
    assert_eq!(beside.list("").unwrap(), Vec::<String>::new());
}

#[test]
fn moto_passes_the_conformance_suite() {
    conformance_on(Kind::Moto);
}

#[test]
fn s3s_fs_passes_the_conformance_suite() {
    conformance_on(Kind::S3sFs);
}

#[test]
fn azurite_passes_the_conformance_suite() {
    conformance_on(Kind::Azurite);
}

/// With one request in ten failing (503s, replies lost after the work was done, slow
/// answers, hangs cut off by the timeout), every rule still holds: retries hide the transient failures, and a put_new
/// whose first attempt landed is not mistaken for somebody else's object.
fn conformance_with_faults(kind: Kind) {
    let store = TestStore::start(kind);
    let faults = Arc::new(Faults::new(0.10, 7));
    let b = store
        .parsed("faults")
        .open_with_faults(&store.storage_env(), faults.clone())
        .unwrap();
    conformance::run(b.as_ref());
    let sent = b.requests().unwrap();
    // Five or more: each kind at least once (they take turns).
    assert!(
        faults.injected() >= 5,
        "{} faults in {sent}",
        faults.injected()
    );
}

#[test]
fn s3_rules_hold_when_requests_fail() {
    conformance_with_faults(Kind::Moto);
}

#[test]
fn azure_rules_hold_when_requests_fail() {
    conformance_with_faults(Kind::Azurite);
}

/// Request economy: a new object is one PUT (no HEAD first), a conditional one too, a read
/// one GET, a listing one page per thousand keys.
fn economy(kind: Kind) {
    let store = TestStore::start(kind);
    let b = store.parsed("economy").open(&store.storage_env()).unwrap();
    let cost = |f: &dyn Fn()| {
        let before = b.requests().unwrap();
        f();
        b.requests().unwrap().since(&before)
    };
    let one_put = Requests {
        put: 1,
        ..Requests::default()
    };
    let chunk = vec![7u8; 4 << 20];
    assert_eq!(
        cost(&|| b.put("chunks/aa/1", chunk.clone()).unwrap()),
        one_put
    );
    assert_eq!(
        cost(&|| b.put_new("chunks/aa/2", chunk.clone()).unwrap()),
        one_put
    );
    assert_eq!(
        cost(&|| assert_eq!(b.get("chunks/aa/1").unwrap().len(), chunk.len())),
        Requests {
            get: 1,
            ..Requests::default()
        }
    );
    assert_eq!(
        cost(&|| assert_eq!(b.get_range("chunks/aa/2", 10..20).unwrap(), [7u8; 10])),
        Requests {
            get: 1,
            ..Requests::default()
        }
    );
    assert_eq!(
        cost(&|| assert_eq!(b.list_sizes("chunks/").unwrap().len(), 2)),
        Requests {
            list: 1,
            ..Requests::default()
        }
    );
}

#[test]
fn an_s3_put_is_one_request() {
    economy(Kind::Moto);
}

#[test]
fn an_azure_put_is_one_request() {
    economy(Kind::Azurite);
}

#[test]
fn a_bucket_or_container_that_does_not_exist_is_named() {
    for kind in [Kind::Moto, Kind::Azurite] {
        let store = TestStore::start(kind);
        let text = store.location("v").replace("kura-test", "no-such-bucket");
        let b = Location::parse(&text)
            .unwrap()
            .open(&store.storage_env())
            .unwrap();
        let e = b.put("config", b"x".to_vec()).unwrap_err();
        assert!(matches!(e, Error::Storage { .. }), "{kind:?}: {e}");
        assert!(e.to_string().contains("no-such-bucket"), "{kind:?}: {e}");
    }
}

#[test]
fn wrong_credentials_are_refused() {
    let store = TestStore::start(Kind::Azurite);
    let mut env = store.storage_env();
    env.azure_key = Some("d3Jvbmcga2V5".into());
    let b = store.parsed("v").open(&env).unwrap();
    let e = b.put("config", b"x".to_vec()).unwrap_err();
    assert!(e.to_string().contains("azblob://"), "{e}");
    assert_eq!(
        store
            .parsed("v")
            .open(&store.storage_env())
            .unwrap()
            .stat("config")
            .unwrap(),
        None
    );
}

/// Every request fails in turn, a body cut halfway among the ways: reads of a large object
/// still come back whole (a retried read starts again, or goes on where the cut left it)
/// or fail cleanly, never short or mixed up.
#[test]
fn reads_come_back_whole_when_bodies_are_cut_off() {
    let store = TestStore::start(Kind::Moto);
    let faults = Arc::new(Faults::new(1.0, 3));
    let b = store
        .parsed("cut")
        .open_with_faults(&store.storage_env(), faults.clone())
        .unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    b.put("big", data.clone()).unwrap();
    let mut whole = 0;
    // Three rounds: every fifth attempt hangs until the 2 s timeout, which is the cost.
    for _ in 0..3 {
        if let Ok(got) = b.get("big") {
            assert!(got == data, "a read came back with {} bytes", got.len());
            whole += 1;
        }
        if let Ok(got) = b.get_range("big", 1_000_000..2_500_000) {
            assert!(got == data[1_000_000..2_500_000], "{} bytes", got.len());
            whole += 1;
        }
    }
    assert!(whole >= 3, "only {whole} of 6 reads succeeded");
    assert!(faults.injected() >= 12, "{} faults", faults.injected());
}
