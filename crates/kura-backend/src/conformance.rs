//! The rules every [`Backend`] must follow, as one runnable suite.
//!
//! Call [`run`] from a test with an empty backend; it panics with a message naming the rule
//! that was broken.

use crate::{Backend, Error};

/// Runs every conformance check against an empty backend.
pub fn run(b: &dyn Backend) {
    put_new_race(b);
    run_without_create_race(b);
}

/// Every check but the race of writers creating one object, for a service known to check
/// `If-None-Match` and write in two steps (s3s-fs): kura's own writers never race for one
/// key (recovery point ids are unique), so such a service still holds vaults safely.
pub fn run_without_create_race(b: &dyn Backend) {
    put_get(b);
    overwrite(b);
    put_new(b);
    not_found(b);
    ranges(b);
    listing(b);
    deletes(b);
    bad_keys(b);
    b.sync().expect("sync succeeds");
}

fn put_get(b: &dyn Backend) {
    b.put("pg/a", b"hello".to_vec()).unwrap();
    assert_eq!(
        b.get("pg/a").unwrap(),
        b"hello",
        "get returns what put stored"
    );
    b.put("pg/empty", b"".to_vec()).unwrap();
    assert_eq!(b.get("pg/empty").unwrap(), b"", "empty objects round-trip");
    assert_eq!(b.stat("pg/empty").unwrap(), Some(0), "empty object exists");
    let big: Vec<u8> = (0..(5 << 20)).map(|i| (i % 251) as u8).collect();
    b.put("pg/big", big.clone()).unwrap();
    assert_eq!(
        b.get("pg/big").unwrap(),
        big,
        "multi-MiB objects round-trip"
    );
    assert_eq!(b.stat("pg/big").unwrap(), Some(big.len() as u64));
}

fn overwrite(b: &dyn Backend) {
    b.put("ow/x", b"first version".to_vec()).unwrap();
    b.put("ow/x", b"2nd".to_vec()).unwrap();
    assert_eq!(
        b.get("ow/x").unwrap(),
        b"2nd",
        "put replaces, no leftover tail"
    );
}

fn put_new(b: &dyn Backend) {
    b.put_new("pn/x", b"one".to_vec()).unwrap();
    let err = b.put_new("pn/x", b"two".to_vec()).unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists { ref key } if key == "pn/x"),
        "put_new on an existing key is AlreadyExists, got {err:?}"
    );
    assert_eq!(
        b.get("pn/x").unwrap(),
        b"one",
        "a refused put_new changes nothing"
    );
}

/// Writers racing to create one object: exactly one wins, and its bytes are what is there.
fn put_new_race(b: &dyn Backend) {
    let results: Vec<_> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..6u8)
            .map(|i| s.spawn(move || (i, b.put_new("race/x", vec![i; 1000 + i as usize]))))
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let winners: Vec<u8> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one racing put_new wins: {results:?}"
    );
    for (_, r) in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, Error::AlreadyExists { .. }),
                "a losing put_new says AlreadyExists: {e}"
            );
        }
    }
    let w = winners[0];
    assert_eq!(
        b.get("race/x").unwrap(),
        vec![w; 1000 + w as usize],
        "the winner's bytes are stored"
    );
    b.delete("race/x").unwrap();
}

fn not_found(b: &dyn Backend) {
    let err = b.get("nf/missing").unwrap_err();
    assert!(
        matches!(err, Error::NotFound { ref key } if key == "nf/missing"),
        "get of a missing key is NotFound naming the key, got {err:?}"
    );
    assert!(b.get_range("nf/missing", 0..1).unwrap_err().is_not_found());
    assert_eq!(b.stat("nf/missing").unwrap(), None);
    assert_eq!(b.list("nf-none/").unwrap(), Vec::<String>::new());
}

fn ranges(b: &dyn Backend) {
    b.put("rg/x", b"0123456789".to_vec()).unwrap();
    assert_eq!(b.get_range("rg/x", 2..5).unwrap(), b"234");
    assert_eq!(b.get_range("rg/x", 0..10).unwrap(), b"0123456789");
    assert_eq!(b.get_range("rg/x", 10..10).unwrap(), b"");
    let err = b.get_range("rg/x", 5..11).unwrap_err();
    assert!(
        matches!(err, Error::InvalidRange { size: 10, .. }),
        "a range past the end is InvalidRange, got {err:?}"
    );
}

fn listing(b: &dyn Backend) {
    for k in ["ls/b/2", "ls/a", "ls/b/1", "ls/c/d/e", "lsx/other"] {
        b.put(k, k.as_bytes().to_vec()).unwrap();
    }
    assert_eq!(
        b.list("ls/").unwrap(),
        vec!["ls/a", "ls/b/1", "ls/b/2", "ls/c/d/e"],
        "list is recursive, sorted and stays inside the prefix"
    );
    assert_eq!(b.list("ls/b/").unwrap(), vec!["ls/b/1", "ls/b/2"]);
    assert_eq!(
        b.list_sizes("ls/").unwrap(),
        vec![
            ("ls/a".to_string(), 4),
            ("ls/b/1".to_string(), 6),
            ("ls/b/2".to_string(), 6),
            ("ls/c/d/e".to_string(), 8)
        ],
        "list_sizes gives the keys of list, each with its size"
    );
    assert_eq!(b.list_sizes("nf-none/").unwrap(), Vec::new());
    assert!(b.list_sizes("ls").is_err());
    let all = b.list("").unwrap();
    assert!(all.contains(&"lsx/other".to_string()) && all.contains(&"ls/a".to_string()));
    assert!(
        b.list("ls").is_err(),
        "a prefix that does not end in '/' is refused"
    );
}

fn deletes(b: &dyn Backend) {
    b.put("del/x", b"x".to_vec()).unwrap();
    b.delete("del/x").unwrap();
    assert!(
        b.get("del/x").unwrap_err().is_not_found(),
        "deleted objects are gone"
    );
    b.delete("del/x").unwrap();
    b.delete("del/never").unwrap();
    assert!(!b.list("").unwrap().iter().any(|k| k.starts_with("del/")));
    let many: Vec<String> = (0..30).map(|i| format!("delmany/{i:02}")).collect();
    for k in &many {
        b.put(k, b"x".to_vec()).unwrap();
    }
    let mut gone = many[..20].to_vec();
    gone.push("delmany/missing".into());
    b.delete_many(&gone)
        .expect("delete_many of present and missing keys succeeds");
    assert_eq!(
        b.list("delmany/").unwrap(),
        many[20..].to_vec(),
        "delete_many removes exactly its keys"
    );
    b.delete_many(&many[20..]).unwrap();
}

fn bad_keys(b: &dyn Backend) {
    for key in ["", "/abs", "a//b", "../up", "a/../b", "sp ace", "a/"] {
        let err = b.put(key, b"x".to_vec()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidKey { .. }),
            "key {key:?} must be refused, got {err:?}"
        );
        assert!(matches!(b.get(key).unwrap_err(), Error::InvalidKey { .. }));
    }
}
